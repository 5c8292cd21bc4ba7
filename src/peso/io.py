"""Atomic writes and folder ownership.

- A reader never sees a half-written file or folder: temp, then rename (a folder swaps in with one
  `renameat2(RENAME_EXCHANGE)` where the kernel has it).
- peso replaces only folders it wrote itself: each carries a `.peso.json` marker naming its kind (`run`,
  `data`, `release`, ...). `check_out` refuses anything else, the working folder, and any folder that holds
  the inputs of the command.

In a run of several processes (`peso.dist`) only the main one writes; the others' writes go nowhere, so
that every process can run the same code."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from peso.errors import PesoError

MARKER = ".peso.json"
KINDS = {"run": "a peso run folder", "data": "a DATA_DIR", "release": "a `peso export` folder"}
# folders written before markers existed, recognised by the files only peso puts together
_LEGACY = {
    "run": ("config.yaml", "progress.json", "manifest.json"),
    "data": ("stats.json", "interactions.parquet"),
}


def is_main() -> bool:
    """The process that writes and prints: the only one, or rank 0 of several."""
    import torch.distributed as dist  # torch is loaded by then; peso.dist would also load accelerate

    return not dist.is_initialized() or dist.get_rank() == 0


def write_text(path: Path, text: str) -> None:
    if not is_main():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def mark(folder: Path, kind: str) -> None:
    """Say that peso wrote `folder` as a `kind`: the only folders `check_out` lets a command replace."""
    from peso import __version__

    info = {"kind": kind, "peso": __version__}  # no time: seeded outputs stay byte-identical
    write_text(folder / MARKER, json.dumps(info) + "\n")


def folder_kind(folder: Path) -> str | None:
    """The kind of folder peso wrote there (its marker, or the files of an older version), else None."""
    try:
        kind = json.loads((folder / MARKER).read_text()).get("kind")
        if isinstance(kind, str):
            return kind
    except (OSError, ValueError, AttributeError):
        pass
    for kind, files in _LEGACY.items():
        if all((folder / f).is_file() for f in files):
            return kind
    return None


def _contains(outer: Path, inner: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_out(
    out: Path, kind: str, overwrite: bool, inputs: Iterable[Path] = (), flag: str = "--out"
) -> bool:
    """May `out` receive a new `kind` folder? True if it exists with content that will be replaced.

    Refused (one line, exit 2): a file; the working folder or one of its parents; a folder that is or holds
    one of `inputs` (data, config); a non-empty folder without --overwrite, or not a `kind` peso wrote."""
    what = KINDS.get(kind, f"a peso {kind} folder")
    if out.is_file():
        raise PesoError(flag, f"{out} is a file, not a folder", f"give a new folder for {what}")
    where = out.resolve()
    if _contains(where, Path.cwd().resolve()):
        raise PesoError(
            flag, f"{out} is the working folder or holds it", f"give a new folder for {what}, e.g. runs/NAME"
        )
    for p in inputs:
        if _contains(where, Path(p).resolve()):
            raise PesoError(
                flag, f"{out} is or holds the input {p}: not writing there", f"give a new folder for {what}"
            )
    if not out.exists() or not any(out.iterdir()):
        return False
    found = folder_kind(out)
    if found != kind:
        it = KINDS.get(found, f"a peso {found} folder") if found else "not written by peso"
        raise PesoError(
            flag,
            f"{out} exists and is {it}: peso replaces only {what} that it wrote",
            "choose another folder (or remove this one yourself)",
        )
    if not overwrite:
        raise PesoError(
            flag, f"{out} already holds {what}", "pass --overwrite to replace it, or choose another"
        )
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _swap_in(new: Path, path: Path) -> None:
    """Put folder `new` at `path`; an old `path` is swapped out in one step and then removed."""
    if not path.exists():
        os.replace(new, path)
        return
    if not _exchange(new, path):  # no atomic swap here: move the old one aside first (a brief gap)
        aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old.tmp"))
        os.replace(path, aside / "old")
        os.replace(new, path)
        new = aside
    shutil.rmtree(new)  # after the swap it holds the old folder


@contextlib.contextmanager
def atomic_dir(path: Path, kind: str | None = None) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success it replaces `path` in one step. `kind`: mark it."""
    if not is_main():
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if kind is not None:
            mark(tmp, kind)
        os.chmod(tmp, 0o755)
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Replacement:
    """--overwrite of a folder that fills over time (a run). The old folder waits beside it, hidden, until
    the new one holds a result (`keep`); a failure before then puts it back exactly as it was (`undo`)."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path, self.kind = path, kind
        self.aside: Path | None = None
        self.created = False

    def begin(self) -> None:
        if is_main() and self.path.exists() and any(self.path.iterdir()):
            holder = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".old"))
            self.aside = holder / "old"
            os.replace(self.path, self.aside)
        if is_main():
            self.created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)

    def keep(self) -> None:
        """The new folder holds a result: the old one goes, and any that a killed replacement left."""
        self.aside = self.created = None
        if not is_main():
            return
        for holder in self.path.parent.glob(f".{self.path.name}.*.old"):
            if folder_kind(holder / "old") == self.kind or not any(holder.iterdir()):
                shutil.rmtree(holder)

    def undo(self) -> None:
        """The new folder holds nothing worth keeping: the old one comes back."""
        if self.aside is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            os.replace(self.aside, self.path)
            shutil.rmtree(self.aside.parent, ignore_errors=True)
            self.aside = None
        elif self.created:  # a folder this command made, left as if it had never run
            shutil.rmtree(self.path, ignore_errors=True)
            self.created = False


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path` for a writer that takes a file name (savefig, safetensors)."""
    if not is_main():
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch) / path.name
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path: two runs' manifests then show whether they read
    the same data, and which file differs if not (a DATA_DIR's stats.json names the paths it was prepared
    from). Hidden files (peso's marker, temp files) are left out."""
    import hashlib

    folder = Path(folder)
    digests = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digests[rel.as_posix()] = h.hexdigest()
    return digests
