"""Summarise a finished `peso run` folder for the docs: per block and method Hit@10 / NDCG@10, the mean over
continual blocks, training targets per second, wall time and peak memory. Prints a Markdown table and
writes the figures as JSON.

    python benchmarks/run_summary.py runs/cds --json runs/cds/summary.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from peso.runfolder import RESULTS, read_csv


def summarize(run_dir: Path) -> dict:
    rows = read_csv(run_dir / RESULTS)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    per = defaultdict(dict)
    speed = defaultdict(list)
    for r in rows:
        per[r["method"]][int(r["block"])] = {
            "hit@10": float(r["hit@10"]),
            "ndcg@10": float(r["ndcg@10"]),
            "users": int(r["users"]),
        }
        if r["targets_per_s"]:
            speed[(r["method"], int(r["block"]) > 0)].append(float(r["targets_per_s"]))
    out = {
        "dataset": manifest["dataset"],
        "wall_seconds": manifest.get("wall_seconds"),
        "peak_rss_mb": manifest.get("peak_rss_mb"),
        "git_commit": manifest.get("git_commit"),
        "methods": {},
    }
    for method, blocks in per.items():
        cont = [v for b, v in blocks.items() if b > 0]
        out["methods"][method] = {
            "blocks": blocks,
            "continual_mean": {m: sum(v[m] for v in cont) / len(cont) for m in ("hit@10", "ndcg@10")}
            if cont
            else None,
            "targets_per_s_block0": (speed.get((method, False)) or [None])[0],
            "targets_per_s_continual": (sum(speed[(method, True)]) / len(speed[(method, True)]))
            if speed.get((method, True))
            else None,
        }
    return out


def markdown(s: dict) -> str:
    methods = s["methods"]
    blocks = sorted({b for m in methods.values() for b in m["blocks"]})
    head = "| method | " + " | ".join(f"block {b}" for b in blocks) + " | mean 1..T-1 |"
    lines = [head, "|---" * (len(blocks) + 2) + "|"]
    for name, m in methods.items():
        cells = [
            f"{m['blocks'][b]['hit@10']:.4f} / {m['blocks'][b]['ndcg@10']:.4f}" if b in m["blocks"] else "-"
            for b in blocks
        ]  # a run still going (or killed) has fewer blocks for later methods
        cm = m["continual_mean"]
        cells.append(f"{cm['hit@10']:.4f} / {cm['ndcg@10']:.4f}" if cm else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    s = summarize(args.run_dir)
    print(
        f"{s['dataset']}: wall {s['wall_seconds']} s, peak memory {s['peak_rss_mb']} MiB (Hit@10 / NDCG@10)"
    )
    print(markdown(s))
    for name, m in s["methods"].items():
        if m["targets_per_s_block0"] or m["targets_per_s_continual"]:
            print(
                f"{name}: training targets/s block 0 {m['targets_per_s_block0']}, continual {m['targets_per_s_continual']}"
            )
    if args.json:
        args.json.write_text(json.dumps(s, indent=2))


if __name__ == "__main__":
    main()
