"""The model store of a deployed recommender: versions of one method's state, each a continual block.

STORE/
  .peso.json          marker (kind "store", format)
  store.json          the method, its settings, the seed, the run's resolved config, what assigns IDs to
                      new items, where it came from
  CURRENT             the published version's number (replaced atomically)
  LOCK                held by the one update that may write (pid, host); a dead holder's lock is taken over
  tokenizer/          what assigns IDs to new items: tokenizer.json, codebooks / collab factors
  versions/N/         one version, written to a temp folder and renamed in whole:
    version.json      number, parent, block, created, data watermark, users, items, metrics, report
    state.safetensors the block state (`param.<name>`, `strategy.<key>`) ; state.json: its JSON and RNGs
    interactions.parquet  the interactions this version added (version 1: every one up to deployment)
    items.parquet     the items it added: item, tokens (JSON list), title, description
    adapter/          the adapter in PEFT format + item_rows.safetensors (for users, as `peso run` saves)
    report.json       what `peso update` measured (versions > 1)

A version's data is its own plus its ancestors' (`parent`), so an update writes only what is new: a
version's bytes grow with its slice, not with the store's age.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from peso.config import RunConfig
from peso.errors import PesoError
from peso.io import folder_kind, write_text

FORMAT = 1
STORE_JSON, CURRENT, LOCK, VERSIONS, TOKENIZER_DIR = "store.json", "CURRENT", "LOCK", "versions", "tokenizer"
VERSION_JSON, STATE, STATE_JSON = "version.json", "state.safetensors", "state.json"
INTERACTIONS, ITEMS, REPORT = "interactions.parquet", "items.parquet", "report.json"
SCHEMA = {
    "user": pl.String,
    "item": pl.String,
    "timestamp": pl.Int64,
    "block": pl.Int32,
    "evaluated": pl.Boolean,
}


@dataclass
class VersionState:
    params: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]
    meta: dict
    rng: dict


class Store:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def open(cls, path: Path) -> Store:
        """A store that peso wrote, of this format; else one line saying what the folder is."""
        path = Path(path)
        if not path.is_dir():
            raise PesoError(
                str(path), "model store not found", "create one with `peso deploy RUN_DIR --out STORE`"
            )
        if folder_kind(path) != "store" or not (path / STORE_JSON).is_file():
            raise PesoError(str(path), "not a model store", "give a folder that `peso deploy` wrote")
        info = json.loads((path / STORE_JSON).read_text())
        if info.get("format") != FORMAT:
            raise PesoError(
                str(path / STORE_JSON),
                f"store format {info.get('format')} of peso {info.get('peso')}; this peso reads format {FORMAT}",
                "use the peso version that wrote it, or deploy the run again",
            )
        return cls(path)

    # --- what the store holds -----------------------------------------------------------------------
    @property
    def info(self) -> dict:
        return json.loads((self.path / STORE_JSON).read_text())

    def config(self) -> RunConfig:
        return RunConfig.model_validate(self.info["config"])

    def current(self) -> int:
        try:
            return int((self.path / CURRENT).read_text().strip())
        except (OSError, ValueError):
            raise PesoError(
                str(self.path / CURRENT), "missing or unreadable", "deploy the run again"
            ) from None

    def versions(self) -> list[int]:
        folder = self.path / VERSIONS
        return (
            sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
            if folder.is_dir()
            else []
        )

    def folder(self, n: int) -> Path:
        return self.path / VERSIONS / str(n)

    def version(self, n: int) -> dict:
        path = self.folder(n) / VERSION_JSON
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            raise PesoError(
                str(path), f"version {n} is missing or unreadable", f"see `peso versions {self.path}`"
            ) from None

    def chain(self, n: int) -> list[int]:
        """Version n and its ancestors, oldest first."""
        out = []
        while n is not None:
            out.append(n)
            n = self.version(n).get("parent")
        return out[::-1]

    def interactions(self, n: int) -> pl.DataFrame:
        """Every interaction version n was trained on, in time order (its own and its ancestors')."""
        parts = [pl.read_parquet(self.folder(v) / INTERACTIONS) for v in self.chain(n)]
        return pl.concat([p.cast(SCHEMA) for p in parts]).select(list(SCHEMA))

    def items(self, n: int) -> pl.DataFrame:
        """item, tokens (list of str), title, description: every item version n knows, in index order."""
        parts = [pl.read_parquet(self.folder(v) / ITEMS) for v in self.chain(n)]
        return pl.concat(parts)

    def index(self, n: int) -> dict[str, list[str]]:
        df = self.items(n)
        return {i: json.loads(t) for i, t in zip(df["item"].to_list(), df["tokens"].to_list(), strict=True)}

    def state(self, n: int) -> VersionState:
        folder = self.folder(n)
        try:
            tensors = load_file(str(folder / STATE))
            meta = json.loads((folder / STATE_JSON).read_text())
        except (OSError, ValueError, SafetensorError) as e:
            raise PesoError(
                str(folder),
                f"version {n}'s state is unreadable ({e.__class__.__name__})",
                "roll back to another version",
            ) from None
        params = {k.removeprefix("param."): v for k, v in tensors.items() if k.startswith("param.")}
        own = {k.removeprefix("strategy."): v for k, v in tensors.items() if k.startswith("strategy.")}
        return VersionState(params, own, meta["meta"], meta["rng"])

    def titles(self, n: int) -> dict[str, str]:
        df = self.items(n).filter(pl.col("title").is_not_null())
        return dict(zip(df["item"].to_list(), df["title"].to_list(), strict=True))

    def check_loadable(self, n: int) -> None:
        """Version n exists and still has its state (`peso gc` removes old versions' states)."""
        self.version(n)
        if not (self.folder(n) / STATE).is_file():
            raise PesoError(
                str(self.folder(n)), f"version {n}'s state was removed by `peso gc`", "choose a newer version"
            )

    # --- writing ------------------------------------------------------------------------------------
    def next_number(self) -> int:
        return max(self.versions(), default=0) + 1

    def publish(self, n: int) -> None:
        """Move CURRENT to version n (one atomic replace: a reader sees the old or the new number)."""
        if not (self.folder(n) / VERSION_JSON).is_file():
            raise PesoError(str(self.path), f"no version {n}", f"see `peso versions {self.path}`")
        write_text(self.path / CURRENT, f"{n}\n")

    def gc(self, keep: int) -> tuple[list[int], int]:
        """Keep the newest `keep` versions, the current one and its anchor (its parent) whole; of the rest,
        a version that a kept one descends from keeps its data (its interactions and items) and loses its
        state, the others go. Returns the versions pruned or removed, and the bytes freed."""
        if keep < 0:
            raise PesoError("--keep", f"{keep} is negative", "give 0 or more")
        current = self.current()
        kept = set(self.versions()[-keep:] if keep else []) | {current}
        parent = self.version(current).get("parent")
        kept |= {parent} if parent is not None else set()
        ancestors = {a for v in kept for a in self.chain(v)}
        touched, freed = [], 0
        for n in self.versions():
            if n in kept:
                continue
            folder = self.folder(n)
            doomed = (
                [folder] if n not in ancestors else [folder / STATE, folder / STATE_JSON, folder / "adapter"]
            )
            size = sum(
                f.stat().st_size
                for d in doomed
                if d.exists()
                for f in ([d] if d.is_file() else d.rglob("*"))
                if f.is_file()
            )
            if not size:
                continue
            for d in doomed:
                if d.is_dir():
                    shutil.rmtree(d)
                else:
                    d.unlink(missing_ok=True)
            touched.append(n)
            freed += size
        return touched, freed

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The store's one writer. A second one is refused; a lock whose process is gone is taken over."""
        path = self.path / LOCK
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _holder(path)
                if holder is not None and _alive(holder):
                    raise PesoError(
                        str(path),
                        f"another update (pid {holder['pid']} on {holder['host']}) is writing this store",
                        "wait for it to finish",
                    ) from None
                path.unlink(missing_ok=True)  # its process is gone: a stale lock
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            break
        else:
            raise PesoError(str(path), "could not take the store's lock", "try again")
        try:
            yield
        finally:
            path.unlink(missing_ok=True)


def _holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # half-written by a process killed as it took the lock: stale


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine's: cannot tell, so it holds
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


def save_state(folder: Path, params: dict, tensors: dict, meta: dict, rng: dict) -> None:
    out = {f"param.{n}": v for n, v in params.items()}
    out.update({f"strategy.{k}": v for k, v in tensors.items()})
    save_file({k: v.detach().contiguous().cpu() for k, v in out.items()}, str(folder / STATE))
    (folder / STATE_JSON).write_text(json.dumps({"meta": meta, "rng": rng}))
