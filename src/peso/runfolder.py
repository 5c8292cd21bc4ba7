"""The run folder's format, and the one reader of it (the resume, the reports and the benchmarks use it).

RUN_DIR holds config.yaml, manifest.json, progress.json, results.csv / .md, training.csv, ndcg10.png, the
outputs per seed (`seed_S/block_0/`, `seed_S/METHOD/block_T/`), and `resume/`: one folder per completed unit
(`seed_S/block_0`, the shared block 0 of the adapter methods, and `seed_S/METHOD/block_T`, one block of one
method) with
- `unit.json`: the unit's results.csv and training.csv rows, the RNG states at its end, the strategy's
  state as JSON;
- `per_user.safetensors`: per-user NDCG@10 of its rows' blocks;
- `state.safetensors`: the block state, what the next block continues from: `param.<name>` (the
  parameters that can differ from block 0's) and `strategy.<key>` (the method's own tensors).
`progress.json` lists the completed units in the order they ran.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_arrays
from safetensors.torch import load_file

from peso.errors import PesoError

CONFIG, MANIFEST, PROGRESS = "config.yaml", "manifest.json", "progress.json"
RESULTS, TRAINING, REPORT, PLOT = "results.csv", "training.csv", "results.md", "ndcg10.png"
RESUME, UNIT, PER_USER, STATE = "resume", "unit.json", "per_user.safetensors", "state.safetensors"
PROGRESS_VERSION = 2  # 1: units were whole methods
BLOCK0 = "block_0"  # the unit of a seed's shared block 0


@dataclass
class Unit:
    """What one completed unit added to the run, and the state it ended in."""

    rows: list[dict]
    train_log: list[dict]
    per_user: dict[tuple[str, int], np.ndarray]  # (method, block) -> NDCG@10 per test user
    seconds: float
    rng: dict  # the RNG states at its end: the next unit starts from them, as in an uninterrupted run
    params: dict[str, torch.Tensor] = field(default_factory=dict)  # parameters after it (block state)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # the method's own state
    meta: dict = field(default_factory=dict)


def unit_dir(run: Path, name: str) -> Path:
    return run / RESUME / name


def unit_name(seed: int, *parts: str) -> str:
    return "/".join([f"seed_{seed}", *parts])


def seed_of(name: str) -> int:
    return int(name.split("/", 1)[0].removeprefix("seed_"))


def read_unit(folder: Path, with_state: bool = False) -> Unit:
    """A completed unit; a missing or damaged one is a one-line error."""
    try:
        record = json.loads((folder / UNIT).read_text())
        arrays = load_arrays(str(folder / PER_USER))
        state = load_file(str(folder / STATE)) if with_state else {}
    except (OSError, ValueError, SafetensorError) as e:  # missing, or damaged (truncated, overwritten)
        raise PesoError(
            str(folder),
            f"state of a completed unit is missing or unreadable ({e.__class__.__name__})",
            "start the run again with --overwrite",
        ) from None
    per_user = {(m, b): arrays[str(i)] for i, (m, b) in enumerate(record["per_user"])}
    params = {k.removeprefix("param."): v for k, v in state.items() if k.startswith("param.")}
    tensors = {k.removeprefix("strategy."): v for k, v in state.items() if k.startswith("strategy.")}
    return Unit(
        record["rows"],
        record["train_log"],
        per_user,
        record["seconds"],
        record["rng"],
        params,
        tensors,
        record.get("meta", {}),
    )


def read_progress(run: Path) -> dict:
    path = run / PROGRESS
    try:
        progress = json.loads(path.read_text())
    except (OSError, ValueError):
        raise PesoError(str(path), "missing or unreadable", "give a folder that `peso run` wrote") from None
    if not isinstance(progress, dict) or not isinstance(progress.get("completed"), list):
        raise PesoError(str(path), "not a progress file of peso", "give a folder that `peso run` wrote")
    return progress


def read_units(run: Path) -> tuple[list[dict], list[dict], dict[tuple[str, int, int], np.ndarray]]:
    """The rows, training log and per-user NDCG@10 of every completed unit, in the order they ran."""
    rows, log, per_user = [], [], {}
    for name in read_progress(run)["completed"]:
        unit = read_unit(unit_dir(run, name))
        rows += unit.rows
        log += unit.train_log
        per_user.update({(m, seed_of(name), b): v for (m, b), v in unit.per_user.items()})
    return rows, log, per_user


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csv(path: Path) -> list[dict]:
    """results.csv or training.csv, numbers as numbers (the method column stays text)."""
    with path.open(newline="") as f:
        return [{k: v if k == "method" else _number(v) for k, v in r.items()} for r in csv.DictReader(f)]
