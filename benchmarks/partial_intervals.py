"""Means and paired bootstrap intervals from a run folder that did not finish (results.md is written at
the end): per-user NDCG@10 is recomputed from each completed (method, seed)'s recommendations.csv, which
match the results.csv means it prints beside them.

    python benchmarks/partial_intervals.py runs/cds-seeds
"""

import collections
import csv
import sys
from pathlib import Path

import numpy as np

from peso.compare import compare_methods

out = Path(sys.argv[1])
rows = list(csv.DictReader(open(out / "results.csv")))
done = collections.defaultdict(set)
for r in rows:
    done[(r["method"], int(r["seed"]))].add(int(r["block"]))
complete = {k for k, v in done.items() if v == {0, 1, 2, 3, 4}}
per_user = {}
for m, s in complete:
    for b in range(5):
        d = out / f"seed_{s}" / m / f"block_{b}"
        if m != "popular" and b == 0:
            d = out / f"seed_{s}" / "block_0"
        vals = []
        for r in csv.DictReader(open(d / "recommendations.csv")):
            groups = r["recommendations"].split(" ") if r["recommendations"] else []
            rank = next((i + 1 for i, g in enumerate(groups) if r["target"] in g.split("|")), 0)
            vals.append(1 / np.log2(rank + 1) if 0 < rank <= 10 else 0.0)
        per_user[(m, s, b)] = np.array(vals)
seeds = sorted({s for _, s in complete})
print("complete (method, seed):", sorted(complete))
for m in dict.fromkeys(r["method"] for r in rows):
    ss = [s for s in seeds if (m, s) in complete]
    if not ss:
        continue
    means = [np.mean([per_user[(m, s, b)].mean() for b in range(1, 5)]) for s in ss]
    hits = [
        np.mean(
            [
                float(r["hit@10"])
                for r in rows
                if r["method"] == m and int(r["seed"]) == s and int(r["block"]) > 0
            ]
        )
        for s in ss
    ]
    nd = [
        np.mean(
            [
                float(r["ndcg@10"])
                for r in rows
                if r["method"] == m and int(r["seed"]) == s and int(r["block"]) > 0
            ]
        )
        for s in ss
    ]
    print(
        f"{m:24s} seeds {ss} hit@10 {np.mean(hits):.4f} ± {np.std(hits):.4f} ndcg@10 {np.mean(nd):.4f} ± {np.std(nd):.4f} (recomputed {np.mean(means):.4f})"
    )
common = [s for s in seeds if all((m, s) in complete for m in {k[0] for k in complete})]
iv = compare_methods({k: v for k, v in per_user.items() if k[1] in common})
print("intervals over seeds", common)
for m, d in iv.items():
    print(m, {r: str(x) for r, x in d.items()})
