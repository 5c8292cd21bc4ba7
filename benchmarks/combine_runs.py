"""One comparison from several run folders on the same data, finished or not: the LLM methods of one run next
to the non-LLM ones of another, or a run that is still going. Reads each folder's completed units through
`peso.runfolder` (result rows and exact per-user NDCG@10), checks that every run evaluated the same users
per block, and writes results.md's tables (mean ± std over seeds, floors, paired bootstrap intervals against
single and PESO) for the union.

    python benchmarks/combine_runs.py runs/beauty-seeds runs/classic-beauty-sasrec --md runs/beauty-all.md
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from peso.compare import compare_methods
from peso.errors import PesoError
from peso.io import write_text
from peso.report import markdown, plot
from peso.runfolder import read_units


def load_units(run: Path) -> tuple[list[dict], dict]:
    try:
        rows, _, per_user = read_units(run)
    except PesoError as e:
        raise SystemExit(f"{run}: not a run folder, or not started yet ({e})") from None
    return rows, per_user


def combine(runs: list[Path], need: set[int] | None = None) -> tuple[list[dict], dict, dict]:
    """The union of the runs' completed units; a (method, seed) found in several runs is taken from the first
    one listed (e.g. `popular`, which every run computes alike). A (method, seed) is kept once it has every
    block in `need` (default: every block any run has), so a block-0 comparison can take references that
    ran blocks 0-1 only."""
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
    blocks = need if need is not None else {b for _, _, b in per_user}
    have: dict[tuple[str, int], set[int]] = {}
    for m, seed, b in per_user:
        have.setdefault((m, seed), set()).add(b)
    done = {u for u, bs in have.items() if blocks <= bs}
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
    ap.add_argument("--png", type=Path, help="plot test NDCG@10 per block (mean over seeds) here")
    args = ap.parse_args()
    rows, per_user, sources = combine(args.runs)
    seeds = sorted({int(r["seed"]) for r in rows})
    summary = {"runs": ", ".join(map(str, args.runs)), "seeds with a completed unit": seeds}
    text = markdown(rows, summary, compare_methods(per_user))
    print(text)
    if args.md:
        write_text(args.md, text)
    if args.png:
        title = f"{', '.join(r.name for r in args.runs)}: test NDCG@10 per block"
        # many folders: wrapped to the axes' width (the legend takes the rest), not cut off the figure
        plot(rows, args.png, textwrap.fill(title, 70))


if __name__ == "__main__":
    main()
