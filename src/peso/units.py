"""Resumable runs: what a run folder keeps of its completed units, and how `peso run --resume` reads it back.

A run works at *method* granularity: the units of a seed are each standalone method, the shared block 0,
then each adapter method (all its blocks). When a unit ends, its state goes to
`RUN_DIR/resume/seed_<s>/<unit>/` in one atomic folder (`unit.json`: its results.csv and training.csv rows
and the RNG states; `per_user.safetensors`: per-user NDCG@10 of each block; for block 0 also
`block0.safetensors`: the parameters block 0 trained), then `progress.json` lists it. A kill between the two
only costs the unit again. A resumed run replays completed units from those files in the original order and
recomputes the rest, so it ends with the same files as an uninterrupted run.

Blocks inside a method are not resumable: strategies keep state across blocks (anchors, past adapters,
Fisher) that only they know how to rebuild, whereas a whole method is exact, being deterministic given the
block-0 parameters, the per-block seeds and the RNG state it starts from.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays
from safetensors.torch import load_file, save_file

from peso.config import RunConfig
from peso.errors import PesoError
from peso.io import atomic_dir, folder_kind, write_text

PROGRESS = "progress.json"
BLOCK0 = "block_0"  # the unit name of a seed's shared block 0


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


@dataclass
class Unit:
    """What one completed unit added to the run: its rows, training log and per-user NDCG@10 arrays."""

    rows: list[dict]
    train_log: list[dict]
    per_user: dict[tuple[str, int], np.ndarray]  # (method, block) -> NDCG@10 per test user
    seconds: float
    rng: dict  # the RNG states at its end: the next unit starts from them, as in an uninterrupted run
    state: dict[str, torch.Tensor] | None = None  # block 0 only: the parameters it trained


def unit_dir(out: Path, seed: int, unit: str) -> Path:
    return out / "resume" / f"seed_{seed}" / unit


def save_unit(folder: Path, unit: Unit) -> None:
    """One atomic folder: unit.json, per_user.safetensors and, for block 0, block0.safetensors."""
    keys = list(unit.per_user)
    record = {
        "rows": unit.rows,
        "train_log": unit.train_log,
        "per_user": [[m, b] for m, b in keys],
        "seconds": unit.seconds,
        "rng": unit.rng,
    }
    with atomic_dir(folder) as tmp:
        write_text(tmp / "unit.json", json.dumps(record, default=_json_default))
        arrays = {str(i): np.ascontiguousarray(unit.per_user[k]) for i, k in enumerate(keys)}
        save_arrays(arrays, str(tmp / "per_user.safetensors"))
        if unit.state is not None:
            save_file({n: v.contiguous() for n, v in unit.state.items()}, str(tmp / "block0.safetensors"))


def load_unit(folder: Path, with_state: bool = False) -> Unit:
    try:
        record = json.loads((folder / "unit.json").read_text())
        arrays = load_arrays(str(folder / "per_user.safetensors"))
        state = load_file(str(folder / "block0.safetensors")) if with_state else None
    except (OSError, ValueError, SafetensorError) as e:  # missing, or damaged (truncated, overwritten)
        raise PesoError(
            str(folder),
            f"state of a completed unit is missing or unreadable ({e.__class__.__name__})",
            "start the run again with --overwrite",
        ) from None
    per_user = {(m, b): arrays[str(i)] for i, (m, b) in enumerate(record["per_user"])}
    return Unit(record["rows"], record["train_log"], per_user, record["seconds"], record["rng"], state)


def check_units(out: Path, completed: list[str]) -> None:
    """Read every completed unit before a resume writes anything: a damaged one stops it in one line."""
    for name in completed:
        seed, unit = name.split("/", 1)
        load_unit(out / "resume" / seed / unit, with_state=unit == BLOCK0)


def write_progress(out: Path, completed: list[str], seconds: float, finished: bool) -> None:
    """progress.json: the completed units, in order; `peso run --resume` starts after them."""
    record = {"version": 1, "completed": completed, "seconds": round(seconds, 1), "finished": finished}
    write_text(out / PROGRESS, json.dumps(record, indent=1))


def load_resumable(out: Path) -> tuple[RunConfig, dict]:
    """The saved config and progress of a run folder that `--resume` can continue; writes nothing."""
    fix = f"start a run with `peso run --config CONFIG --out {out}`"
    if not out.is_dir():
        raise PesoError(str(out), "run folder not found", fix)
    if not (out / "config.yaml").is_file() or not (out / PROGRESS).is_file():
        ours = folder_kind(out) == "run"  # killed before it wrote progress.json: start it again
        raise PesoError(
            str(out),
            f"not a resumable run folder (no config.yaml or {PROGRESS})",
            f"start it again with `peso run --config CONFIG --out {out} --overwrite`"
            if ours
            else "give --resume a folder that `peso run` wrote",
        )
    try:
        cfg = RunConfig.model_validate(yaml.safe_load((out / "config.yaml").read_text()))
        progress = json.loads((out / PROGRESS).read_text())
        if progress.get("version") != 1 or not isinstance(progress.get("completed"), list):
            raise ValueError("unknown progress format")
    except (OSError, ValueError, yaml.YAMLError, AttributeError):  # ValidationError is a ValueError
        raise PesoError(str(out), f"config.yaml or {PROGRESS} is unreadable", fix) from None
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
    return None if a == b else where or "(top level)"


def remove_partial_writes(out: Path) -> None:
    """What writers killed mid-write left (peso.io's hidden `.name.tmp` files and folders)."""
    for tmp in sorted(out.rglob(".*.tmp"), reverse=True):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
