"""Every method on several datasets in one table, as docs/results.md shows them: per dataset, NDCG@10 and
Hit@10 over the continual blocks (mean ± std over seeds, and how many seeds), the paired bootstrap intervals
against `single` and PESO, the adapter state kept after the last block, the training seconds per
continual block and the extra term's share of the training loss (`proximal_share` in training.csv). Each dataset is the union of its run folders, as `combine_runs.py` makes it.

    python benchmarks/side_by_side.py --dataset CDs runs/cds-seeds runs/cds-rest \\
        --dataset Beauty runs/beauty-seeds runs/beauty-s2 --md runs/side-by-side.md --json runs/side.json

`--seeds 0` keeps seed 0 only (a lambda sweep run on one seed, next to the methods it is compared with).
`--time-seeds 1 2` takes the training seconds from those seeds only (e.g. the ones that ran on an
otherwise idle machine); the other columns use every seed. `--block0` reports block 0 instead of the
continual mean (test figures and paired intervals of the block-0 models; the bytes and seconds are block 0's):
two block-0 recipes in different folders, paired over the same users.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from combine_runs import combine

from peso.compare import compare_methods
from peso.io import write_text
from peso.report import continual_means
from peso.runfolder import TRAINING, read_csv


def penalty_shares(runs: list[Path], seeds: list[int] | None = None) -> dict[str, float]:
    """method -> mean share of the extra term in the training loss over its continual epochs (training.csv's
    `proximal_share`), a (method, seed) taken from the first run that has it, as `combine` does."""
    seen: dict[tuple[str, int], list[float]] = {}
    for run in runs:
        path = run / TRAINING
        if not path.is_file():
            continue
        mine: dict[tuple[str, int], list[float]] = {}
        for r in read_csv(path):
            if seeds is not None and r["seed"] not in seeds:
                continue
            if r["block"] >= 1 and r["proximal"] > 0:
                mine.setdefault((r["method"], r["seed"]), []).append(r["proximal_share"])
        for key, shares in mine.items():
            seen.setdefault(key, shares)
    by_method: dict[str, list[float]] = {}
    for (method, _), shares in seen.items():
        by_method.setdefault(method, []).extend(shares)
    return {m: float(np.mean(v)) for m, v in by_method.items()}


def dataset_summary(
    runs: list[Path],
    time_seeds: list[int] | None = None,
    seeds: list[int] | None = None,
    refs: tuple[str, ...] = ("single", "peso"),
    block0: bool = False,
) -> dict[str, dict]:
    """method -> figures of one dataset (see the module docstring), over `seeds` only if given."""
    rows, per_user, _ = combine(runs, {0} if block0 else None)
    if seeds is not None:
        rows = [r for r in rows if int(r["seed"]) in seeds]
        per_user = {k: v for k, v in per_user.items() if k[1] in seeds}
    if block0:  # block 0 standing in for the continual blocks: the same means, intervals and columns
        rows = [{**r, "block": 1} for r in rows if r["block"] == 0]
        per_user = {(m, s, 1): v for (m, s, b), v in per_user.items() if b == 0}
    shares = {} if block0 else penalty_shares(runs, seeds)  # the term acts in the continual blocks only
    means, intervals = continual_means(rows), compare_methods(per_user, refs)
    last = max(r["block"] for r in rows)
    out = {}
    for method, ms in means.items():
        mine = [r for r in rows if r["method"] == method]
        timed = [
            float(r["train_seconds"] or 0)
            for r in mine
            if r["block"] >= 1 and (time_seeds is None or r["seed"] in time_seeds)
        ]
        out[method] = {
            "seeds": ms["ndcg@10"][2],
            "ndcg@10": ms["ndcg@10"][:2],
            "hit@10": ms["hit@10"][:2],
            "vs": {ref: str(iv) for ref, iv in intervals.get(method, {}).items()},
            "bytes_after_last_block": int(
                max(r.get("adapter_bytes") or 0 for r in mine if r["block"] == last)
            ),
            "train_s_per_continual_block": float(np.mean(timed)) if timed else None,
            "extra_term_share_of_loss": shares.get(method),
        }
    return out


def _mean(v: tuple[float, float], n: int) -> str:
    return f"{v[0]:.4f}" if n == 1 else f"{v[0]:.4f} ± {v[1]:.4f}"


def tables(data: dict[str, dict[str, dict]], refs: tuple[str, ...] = ("single", "peso")) -> str:
    methods = list(dict.fromkeys(m for d in data.values() for m in d))
    names = list(data)
    head = ["method"] + [f"{n} {c}" for n in names for c in ("NDCG@10 (seeds)", *(f"vs {r}" for r in refs))]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for m in methods:
        cells = [m]
        for n in names:
            f = data[n].get(m)
            if f is None:
                cells += [""] * (1 + len(refs))
                continue
            cells += [
                f"{_mean(f['ndcg@10'], f['seeds'])} ({f['seeds']})",
                *(f["vs"].get(r, "") for r in refs),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    head = ["method"] + [
        f"{n} {c}"
        for n in names
        for c in ("Hit@10", "bytes after last block", "train s / block", "term's share")
    ]
    lines += ["", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for m in methods:
        cells = [m]
        for n in names:
            f = data[n].get(m)
            if f is None:
                cells += ["", "", "", ""]
                continue
            secs, share = f["train_s_per_continual_block"], f["extra_term_share_of_loss"]
            cells += [
                _mean(f["hit@10"], f["seeds"]),
                f"{f['bytes_after_last_block']:,}",
                "" if secs is None else f"{secs:.0f}",
                "" if share is None else f"{share:.1e}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", nargs="+", action="append", required=True, metavar=("NAME", "RUN_DIR"))
    ap.add_argument("--time-seeds", nargs="+", type=int)
    ap.add_argument("--seeds", nargs="+", type=int, help="only these seeds (e.g. a sweep run on seed 0)")
    ap.add_argument(
        "--refs", nargs="+", default=["single", "peso"], help="methods the paired intervals are taken against"
    )
    ap.add_argument("--block0", action="store_true", help="block 0 instead of the continual blocks' mean")
    ap.add_argument("--md", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    refs = tuple(args.refs)
    data = {}
    for name, *runs in args.dataset:
        if not runs:
            ap.error(f"--dataset {name}: give at least one run folder")
        data[name] = dataset_summary([Path(r) for r in runs], args.time_seeds, args.seeds, refs, args.block0)
    text = tables(data, refs)
    print(text)
    if args.md:
        write_text(args.md, text)
    if args.json:
        write_text(args.json, json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
