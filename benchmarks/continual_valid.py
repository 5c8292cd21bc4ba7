"""Validation NDCG@10 over the continual blocks: a rule for choosing a recipe by every block a method trains,
not by block 0 alone. Each RUN:METHOD pair's model after each continual block is decoded on that block's
validation targets (and test targets, which must equal the run folder's figures; benchmarks/beam.py --block).

    python benchmarks/continual_valid.py runs/sports-base:single runs/sports-cbdrop:single-cbdrop \\
        --cache benchmarks/results/contvalid --json benchmarks/results/sports-contvalid.json

A block's figures are cached as CACHE/<run folder name>-<method>-b<N>.json (beam.py's --json), so an
interrupted call resumes and the same pair is decoded once. The choice: the highest mean validation NDCG@10
over blocks 1.. (averaged over the pairs that share a method label). Runs on one thread.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from beam import decode_splits

from peso.io import write_text
from peso.runfolder import read_csv


def block_figures(run: Path, method: str, block: int, beam: int, cache: Path) -> dict:
    """{valid, test: {hit@10, ndcg@10}} of `method`'s model after `block`, decoded once."""
    path = cache / f"{run.name}-{method}-b{block}.json"
    if not path.is_file():
        out, n = decode_splits(run, [beam], method=method, block=block)
        payload = {
            "run": str(run),
            "method": method,
            "block": block,
            "users": n,
            "chosen": beam,
            "beams": out,
        }
        write_text(path, json.dumps(payload, indent=1) + "\n")
    return json.loads(path.read_text())["beams"][str(beam)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="+", metavar="RUN:METHOD")
    ap.add_argument("--beam", type=int, default=50)
    ap.add_argument("--cache", type=Path, required=True, help="a folder for the per-block figures")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)

    rows = []
    for pair in args.pairs:
        run, _, method = pair.rpartition(":")
        blocks = sorted(
            {int(r["block"]) for r in read_csv(Path(run) / "results.csv") if r["method"] == method}
        )
        figs = {b: block_figures(Path(run), method, b, args.beam, args.cache) for b in blocks if b > 0}
        if not figs:
            raise SystemExit(f"{pair}: no continual block of {method} in {run}/results.csv")
        valid = [figs[b]["valid"]["ndcg@10"] for b in figs]
        test = [figs[b]["test"]["ndcg@10"] for b in figs]
        rows.append({"run": run, "method": method, "valid": valid, "test": test})
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
    print(f"chosen by mean validation NDCG@10 over the continual blocks: {chosen} ({means[chosen]:.4f})")
    if args.json:
        write_text(args.json, json.dumps({"rows": rows, "means": means, "chosen": chosen}, indent=1) + "\n")


if __name__ == "__main__":
    main()
