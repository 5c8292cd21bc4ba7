"""One comparison from several run folders on the same data, finished or not: the LLM methods of one run next
to the non-LLM ones of another, or a run that is still going. Reads each folder's completed units
(`progress.json` and `resume/seed_<s>/<unit>/`: result rows and exact per-user NDCG@10), checks that every run
evaluated the same users per block, and writes results.md's tables (mean ± std over seeds, floors, paired
bootstrap intervals against single and PESO) for the union. A folder from before resumable runs (no
progress.json) contributes each (method, seed) whose blocks all have a recommendations.csv, with per-user
NDCG@10 recomputed from it.

    python benchmarks/combine_runs.py runs/beauty-seeds runs/classic-beauty-sasrec --md runs/beauty-all.md
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from peso.compare import compare_methods
from peso.io import write_text
from peso.report import markdown


def ndcg10(recommendations: Path) -> np.ndarray:
    """Per-user NDCG@10 from a recommendations.csv (groups of items sharing an ID are joined by '|')."""
    vals = []
    for r in csv.DictReader(recommendations.open()):
        groups = r["recommendations"].split(" ") if r["recommendations"] else []
        rank = next((i + 1 for i, g in enumerate(groups) if r["target"] in g.split("|")), 0)
        vals.append(1 / np.log2(rank + 1) if 0 < rank <= 10 else 0.0)
    return np.array(vals)


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def load_finished_blocks(run: Path) -> tuple[list[dict], dict]:
    rows = list(csv.DictReader((run / "results.csv").open()))
    blocks = sorted({int(r["block"]) for r in rows})
    done: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        done.setdefault((r["method"], int(r["seed"])), []).append(r)
    keep, per_user = [], {}
    for (m, seed), rs in done.items():
        if sorted(int(r["block"]) for r in rs) != blocks:
            continue  # a method the run did not finish
        for b in blocks:  # adapter methods share block 0's model and its recommendations
            d = run / f"seed_{seed}" / m / f"block_{b}"
            d = run / f"seed_{seed}" / "block_0" if b == 0 and not d.is_dir() else d
            per_user[(m, seed, b)] = ndcg10(d / "recommendations.csv")
        keep += [{k: _number(v) if k != "method" else v for k, v in r.items()} for r in rs]
    return keep, per_user


def load_units(run: Path) -> tuple[list[dict], dict]:
    if not (run / "progress.json").is_file():
        if not (run / "results.csv").is_file():
            raise SystemExit(f"{run}: no progress.json or results.csv: not a run folder, or not started yet")
        return load_finished_blocks(run)
    progress = json.loads((run / "progress.json").read_text())
    rows, per_user = [], {}
    for unit in progress["completed"]:
        folder = run / "resume" / unit
        seed = int(unit.split("/")[0].removeprefix("seed_"))
        record = json.loads((folder / "unit.json").read_text())
        arrays = load_file(str(folder / "per_user.safetensors"))
        rows += record["rows"]
        for i, (m, b) in enumerate(record["per_user"]):
            per_user[(m, seed, b)] = arrays[str(i)]
    return rows, per_user


def combine(runs: list[Path]) -> tuple[list[dict], dict, dict]:
    """The union of the runs' completed units; a (method, seed) found in several runs is taken from the first
    one listed (e.g. `popular`, which every run computes alike)."""
    rows, per_user, users, sources = [], {}, {}, {}
    for run in runs:
        r, p = load_units(run)
        for row in r:
            key = (int(row["seed"]), int(row["block"]))
            if users.setdefault(key, row["users"]) != row["users"]:
                raise SystemExit(
                    f"{run}: seed {key[0]} block {key[1]} has {row['users']} users, not {users[key]}"
                )
        mine = {(row["method"], int(row["seed"])) for row in r}
        taken = {u for u in mine if sources.get(u, run) != run}
        for u in sorted(taken):
            print(f"(skipped {u[0]} seed {u[1]} of {run}: taken from {sources[u]})")
        for u in mine - taken:
            sources[u] = run
        rows += [row for row in r if (row["method"], int(row["seed"])) not in taken]
        per_user.update({k: v for k, v in p.items() if (k[0], k[1]) not in taken})
    # block 0's unit holds every adapter method's block-0 row: keep a (method, seed) only once it has all blocks
    blocks = {b for _, _, b in per_user}
    have: dict[tuple[str, int], set[int]] = {}
    for m, seed, b in per_user:
        have.setdefault((m, seed), set()).add(b)
    done = {u for u, bs in have.items() if bs == blocks}
    rows = [row for row in rows if (row["method"], int(row["seed"])) in done]
    per_user = {k: v for k, v in per_user.items() if (k[0], k[1]) in done}
    return (
        rows,
        per_user,
        {f"{m} seed {seed}": str(r) for (m, seed), r in sources.items() if (m, seed) in done},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--md", type=Path, help="write the Markdown report here")
    args = ap.parse_args()
    rows, per_user, sources = combine(args.runs)
    seeds = sorted({int(r["seed"]) for r in rows})
    summary = {"runs": ", ".join(map(str, args.runs)), "seeds with a completed unit": seeds}
    text = markdown(rows, summary, compare_methods(per_user))
    print(text)
    if args.md:
        write_text(args.md, text)


if __name__ == "__main__":
    main()
