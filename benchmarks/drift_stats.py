"""How much each block's items drift from the previous block's, against the same distance between two halves
of one block (its sampling floor), from a DATA_DIR's interactions.parquet. With run folders, also each
method's validation gain within a continual block (the first epoch's validation loss minus the best), from
training.csv. docs/results.md ("peso-adaptive re-derived") reads it.

    python benchmarks/drift_stats.py data/sim-noisy data/beauty --runs runs/beauty-rule --method single \\
        --json benchmarks/results/drift-stats.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import polars as pl
from scipy.spatial.distance import jensenshannon

from peso.errors import PesoError
from peso.io import write_text
from peso.runfolder import TRAINING, read_csv


def js_distance(p: Counter, q: Counter) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two count distributions."""
    keys = sorted(set(p) | set(q))
    return float(jensenshannon([p.get(k, 0) for k in keys], [q.get(k, 0) for k in keys], base=2))


def block_drift(data_dir: Path) -> list[dict]:
    """Per block t >= 1: JS(block t, block t-1) and JS between block t's two halves (users alternated)."""
    path = data_dir / "interactions.parquet"
    if not path.is_file():
        raise PesoError(
            str(path), "not found", "give a DATA_DIR written by `peso prepare` or `peso simulate`"
        )
    try:
        d = pl.read_parquet(path, columns=["user", "item", "block"])
    except Exception as e:  # polars raises several kinds for a bad file or a missing column
        raise PesoError(
            str(path),
            f"needs columns user, item, block ({type(e).__name__})",
            "rewrite it with `peso prepare`",
        ) from None
    if d.height == 0:
        raise PesoError(str(path), "no interactions", "give a non-empty DATA_DIR")
    out = []
    for t in range(1, int(d["block"].max()) + 1):
        now, before = d.filter(pl.col("block") == t), d.filter(pl.col("block") == t - 1)
        half = set(sorted(set(now["user"].to_list()))[::2])
        first = now.filter(pl.col("user").is_in(list(half)))
        second = now.filter(~pl.col("user").is_in(list(half)))
        out.append(
            {
                "block": t,
                "js_to_previous": js_distance(
                    Counter(now["item"].to_list()), Counter(before["item"].to_list())
                ),
                "js_halves": js_distance(Counter(first["item"].to_list()), Counter(second["item"].to_list())),
            }
        )
    return out


def validation_gains(run: Path, method: str, seed: int = 0) -> list[float]:
    """Per continual block: the method's first-epoch validation loss minus its lowest."""
    if not (run / TRAINING).is_file():
        raise PesoError(
            str(run / TRAINING), "not found", "give a `peso run` folder with a continual block trained"
        )
    rows = [
        r for r in read_csv(run / TRAINING) if r["method"] == method and r["seed"] == seed and r["block"] >= 1
    ]
    if not rows:
        raise PesoError(
            str(run / TRAINING), f"no continual block of method {method!r}, seed {seed}", "check --method"
        )
    gains = []
    for t in sorted({r["block"] for r in rows}):
        v = [r["valid_loss"] for r in rows if r["block"] == t]
        gains.append(v[0] - min(v))
    return gains


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="+", type=Path, help="DATA_DIRs")
    ap.add_argument("--runs", nargs="*", type=Path, default=[], help="run folders for the validation gains")
    ap.add_argument("--method", default="single")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    try:
        run(a)
    except PesoError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run(a: argparse.Namespace) -> None:
    result: dict = {"drift": {}, "validation_gain": {}}
    for dd in a.data:
        rows = block_drift(dd)
        result["drift"][dd.name] = rows
        cells = ", ".join(f"{r['js_to_previous']:.2f}/{r['js_halves']:.2f}" for r in rows)
        print(f"{dd.name}: JS(t, t-1) / JS(halves of t), blocks 1..: {cells}")
    for run in a.runs:
        gains = validation_gains(run, a.method)
        result["validation_gain"][run.name] = {"method": a.method, "seed": 0, "gains": gains}
        print(f"{run.name} {a.method}: validation gain per block: " + ", ".join(f"{g:.3f}" for g in gains))
    if a.json:
        write_text(a.json, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
