"""The unit store: how a run folder keeps its completed units, and how `peso run --resume` reads it back.

A run works in units: per seed, each block of each standalone method, the shared block 0 of the adapter
strategies, then each block of each adapter strategy. When a unit ends, its record and block state go to
`RUN_DIR/resume/<unit>/` in one atomic folder (`peso.runfolder` has the format), then `progress.json` lists
it. A kill between the two only costs the unit again. A resumed run replays completed units in the
original order, continues each method from the block state of its last completed block (parameters, the
strategy's own state, the RNG states), and so ends with the same files as an uninterrupted run.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.numpy import save_file as save_arrays
from safetensors.torch import save_file

from peso.config import RunConfig
from peso.errors import PesoError
from peso.io import atomic_dir, folder_kind, is_main, write_text
from peso.runfolder import (
    CONFIG,
    PER_USER,
    PROGRESS,
    PROGRESS_VERSION,
    STATE,
    UNIT,
    Unit,
    read_progress,
    read_unit,
    unit_dir,
)


def rng_state() -> dict:
    """Every global RNG a unit may draw from, as JSON (hex bytes, lists): never pickle."""
    n, py = np.random.get_state(), random.getstate()
    return {
        "torch": torch.get_rng_state().numpy().tobytes().hex(),
        # only if CUDA is in use: asking for its state would initialise it on a CPU run
        "cuda": [t.numpy().tobytes().hex() for t in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_initialized()
        else [],
        "numpy": [n[0], n[1].tolist(), int(n[2]), int(n[3]), float(n[4])],
        "python": [py[0], list(py[1]), py[2]],
    }


def set_rng_state(state: dict) -> None:
    def tensor(h: str) -> torch.Tensor:
        return torch.frombuffer(bytearray.fromhex(h), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["torch"]))
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensor(h) for h in state["cuda"]])
    n, py = state["numpy"], state["python"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    random.setstate((py[0], tuple(py[1]), py[2]))


def _json_default(o: object) -> object:
    if hasattr(o, "item"):  # numpy / torch scalars in report fields
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


class UnitStore:
    """The completed units of one run folder."""

    def __init__(self, out: Path, completed: list[str] | None = None) -> None:
        self.out = out
        self.completed: list[str] = list(completed or [])

    def done(self, name: str) -> bool:
        return name in self.completed

    def load(self, name: str, with_state: bool = False) -> Unit:
        return read_unit(unit_dir(self.out, name), with_state)

    def save(self, name: str, unit: Unit, seconds: float, supersedes: str | None = None) -> None:
        """One atomic folder, then progress.json lists it. `supersedes`: the same method's previous block,
        whose block state the new one makes unnecessary (only a method's latest state is continued from):
        its state file goes, its records stay."""
        self._write(name, unit)
        self.completed.append(name)
        write_progress(self.out, self.completed, seconds, False)
        if supersedes is not None and is_main():
            (unit_dir(self.out, supersedes) / STATE).unlink(missing_ok=True)

    def rewrite(self, name: str, unit: Unit) -> None:
        """A completed unit's folder replaced by `unit`, atomically (block 0, given rows for added methods)."""
        self._write(name, unit)

    def _write(self, name: str, unit: Unit) -> None:
        keys = list(unit.per_user)
        record = {
            "rows": unit.rows,
            "train_log": unit.train_log,
            "per_user": [[m, b] for m, b in keys],
            "seconds": unit.seconds,
            "rng": unit.rng,
            "meta": unit.meta,
        }
        with atomic_dir(unit_dir(self.out, name)) as tmp:
            write_text(tmp / UNIT, json.dumps(record, default=_json_default))
            arrays = {str(i): np.ascontiguousarray(unit.per_user[k]) for i, k in enumerate(keys)}
            save_arrays(arrays, str(tmp / PER_USER))
            tensors = {f"param.{n}": v for n, v in unit.params.items()}
            tensors.update({f"strategy.{k}": v for k, v in unit.tensors.items()})
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / STATE))

    def latest(self) -> set[str]:
        """The units whose block state is kept: each method's latest block per seed, and each block 0."""
        last: dict[str, str] = {}
        for name in self.completed:
            last[name.rsplit("/", 1)[0] if name.count("/") == 2 else name] = name
        return set(last.values())

    def check(self) -> None:
        """Read every completed unit before a resume writes anything: a damaged one stops it in one line."""
        keep = self.latest()
        for name in self.completed:
            self.load(name, with_state=name in keep)


def write_progress(out: Path, completed: list[str], seconds: float, finished: bool) -> None:
    """progress.json: the completed units, in order; `peso run --resume` starts after them."""
    record = {
        "version": PROGRESS_VERSION,
        "completed": completed,
        "seconds": round(seconds, 1),
        "finished": finished,
    }
    write_text(out / PROGRESS, json.dumps(record, indent=1))


def load_resumable(out: Path) -> tuple[RunConfig, dict]:
    """The saved config and progress of a run folder that `--resume` can continue; writes nothing."""
    if not out.is_dir():
        raise PesoError(
            str(out), "run folder not found", f"start a run with `peso run --config CONFIG --out {out}`"
        )
    if not (out / CONFIG).is_file() or not (out / PROGRESS).is_file():
        ours = folder_kind(out) == "run"  # killed before it wrote progress.json: start it again
        raise PesoError(
            str(out),
            f"not a resumable run folder (no {CONFIG} or {PROGRESS})",
            f"start it again with `peso run --config CONFIG --out {out} --overwrite`"
            if ours
            else "give --resume a folder that `peso run` wrote",
        )
    again = f"start it again with `peso run --config CONFIG --out {out} --overwrite`"
    try:
        progress = read_progress(out)
        cfg = RunConfig.model_validate(yaml.safe_load((out / CONFIG).read_text()))
    except (
        PesoError,
        OSError,
        ValueError,
        yaml.YAMLError,
        AttributeError,
    ):  # ValidationError is a ValueError
        raise PesoError(str(out), f"{CONFIG} or {PROGRESS} is unreadable", again) from None
    if progress.get("version") != PROGRESS_VERSION:
        raise PesoError(
            str(out),
            f"made by an older peso (progress version {progress.get('version')}): not resumable",
            again,
        )
    return cfg, progress


def check_same_config(out: Path, saved: RunConfig, given: RunConfig) -> None:
    """A resume given --config / --set must name the saved config (data.path may be written two ways)."""
    diff = _first_difference(_comparable(saved.dump()), _comparable(given.dump()))
    if diff is not None:
        raise PesoError(
            str(out),
            f"--config differs from the run's saved config.yaml at '{diff}'",
            "drop --config and --set to resume with the saved config, or start a new run with another --out",
        )


def _comparable(dump: dict) -> dict:
    """A resolved config dump with data.path absolute: the same folder written two ways is the same."""
    data = {**dump["data"], "path": str(Path(dump["data"]["path"]).resolve())}
    return {**dump, "data": data}


def _first_difference(a: object, b: object, where: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            d = _first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else k)
            if d is not None:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            d = _first_difference(x, y, f"{where}[{k}]")
            if d is not None:
                return d
        return None
    return None if a == b else where or "(top level)"


def remove_partial_writes(out: Path) -> None:
    """What writers killed mid-write left (peso.io's hidden `.name.tmp` files and folders)."""
    for tmp in sorted(out.rglob(".*.tmp"), reverse=True):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
