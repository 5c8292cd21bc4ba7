"""Validation NDCG@10 over the continual blocks: a rule for choosing a recipe by every block a method trains,
not by block 0 alone. Each RUN:METHOD pair's model after each continual block is decoded on that block's
validation targets (and test targets, which must equal the run folder's figures; benchmarks/beam.py --block).

    python benchmarks/continual_valid.py runs/sports-base:single runs/sports-cbdrop:single-cbdrop \\
        --cache benchmarks/results/contvalid --json benchmarks/results/sports-contvalid.json

A block's figures are cached as CACHE/<run folder name>-<method>-b<N>.json (beam.py's --json), so an
interrupted call resumes and the same pair is decoded once. The choice: the highest mean validation NDCG@10
over blocks 1.. (averaged over the pairs that share a method label), and beside it each other label's
difference from the chosen one with a paired 95% bootstrap interval over the validation users (the same
users, checked by a hash of their IDs; seeds averaged per user, as peso.compare does for test). Runs on
one thread. `--block0`: the same over block 0, each METHOD a run's `frozen` entry (its block-0 model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from beam import decode_splits

from peso.compare import Interval, compare_methods
from peso.errors import PesoError
from peso.io import write_text
from peso.runfolder import read_csv


def block_figures(run: Path, method: str, block: int, beam: int, cache: Path) -> dict:
    """{valid, test: {hit@10, ndcg@10, ndcg@10_users, users_sha256}} of `method`'s model after `block`,
    decoded once (a cache file from before per-user figures is decoded again)."""
    path = cache / f"{run.name}-{method}-b{block}.json"
    if not path.is_file() or "ndcg@10_users" not in json.loads(path.read_text())["beams"][str(beam)]["valid"]:
        # block 0 (a `frozen` entry's model): validation only, its test figures are the run's already
        splits = ("valid",) if block == 0 else ("valid", "test")
        out, n = decode_splits(run, [beam], splits=splits, method=method, block=block or None, users=True)
        payload = {
            "run": str(run),
            "method": method,
            "block": block,
            "users": n,
            "chosen": beam,
            "beams": out,
        }
        write_text(path, json.dumps(payload) + "\n")
    return json.loads(path.read_text())["beams"][str(beam)]


def paired(figs: dict[tuple[str, int, int], dict], chosen: str) -> dict[str, Interval]:
    """Each method's validation NDCG@10 minus the chosen one's over the blocks: a paired bootstrap over the
    validation users (peso.compare: seeds averaged per user, on the seeds where both have every block).
    Same users, or it stops."""
    per_user = {}
    for (method, seed, block), f in figs.items():
        other = figs.get((chosen, seed, block))
        if other is not None and other["valid"]["users_sha256"] != f["valid"]["users_sha256"]:
            raise PesoError(
                "RUN:METHOD",
                f"{method} and {chosen} have other validation users at seed {seed}, block {block}",
                "compare runs of the same blocks and users",
            )
        per_user[(method, seed, block)] = np.asarray(f["valid"]["ndcg@10_users"])
    first = min(b for _, _, b in per_user)  # 0 with --block0
    return {m: iv[chosen] for m, iv in compare_methods(per_user, (chosen,), first).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="+", metavar="RUN:METHOD")
    ap.add_argument("--beam", type=int, default=50)
    ap.add_argument("--cache", type=Path, required=True, help="a folder for the per-block figures")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--block0", action="store_true", help="block 0 instead, each METHOD a `frozen` entry")
    args = ap.parse_args()
    torch.set_num_threads(1)

    rows, figs = [], {}
    for pair in args.pairs:
        run, _, method = pair.rpartition(":")
        blocks = sorted(
            {int(r["block"]) for r in read_csv(Path(run) / "results.csv") if r["method"] == method}
        )
        seed = int(yaml.safe_load((Path(run) / "config.yaml").read_text())["seeds"][0])
        blocks = [0] if args.block0 else [b for b in blocks if b > 0]
        for b in blocks:
            figs[(method, seed, b)] = block_figures(Path(run), method, b, args.beam, args.cache)
        mine = [figs[(method, seed, b)] for b in blocks]
        if not mine:
            raise SystemExit(f"{pair}: no continual block of {method} in {run}/results.csv")
        valid = [f["valid"]["ndcg@10"] for f in mine]
        test = (
            [f["test"]["ndcg@10"] for f in mine]
            if not args.block0
            else [
                next(
                    float(r["ndcg@10"])
                    for r in read_csv(Path(run) / "results.csv")
                    if (r["method"], r["block"]) == (method, 0)
                )
            ]
        )
        rows.append({"run": run, "method": method, "seed": seed, "valid": valid, "test": test})
        print(
            f"{run} {method}: valid NDCG@10 {' '.join(f'{v:.4f}' for v in valid)} (mean {np.mean(valid):.4f});"
            f" test mean {np.mean(test):.4f}",
            flush=True,
        )
    by_method: dict[str, list[float]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(float(np.mean(r["valid"])))
    means = {m: float(np.mean(v)) for m, v in by_method.items()}
    chosen = max(means, key=means.get)
    over = "block 0" if args.block0 else "the continual blocks"
    print(f"chosen by mean validation NDCG@10 over {over}: {chosen} ({means[chosen]:.4f})")
    against = paired(figs, chosen)
    for m, iv in against.items():
        print(f"  {m} - {chosen}, validation NDCG@10, paired 95% interval over validation users: {iv}")
    if args.json:
        payload = {"rows": rows, "means": means, "chosen": chosen}
        payload["vs_chosen"] = {
            m: {"mean": iv.mean, "low": iv.low, "high": iv.high} for m, iv in against.items()
        }
        write_text(args.json, json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    try:
        main()
    except PesoError as e:  # bad input: one line and exit code 2, as the CLI does
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
