"""What an update costs: `peso update` time against the slice's size (1k / 10k / 100k interactions) and
against the store's age (its 2nd update against its 20th), and the bytes each version adds, for PESO and
for a cumulative method (sumlora-all keeps one more adapter per block).

Amazon Sports (a DATA_DIR: `peso prepare ../shared/data/amazon2014-sports-5core --out data/sports`, then
`peso tokenize data/sports --method collab`) is run on its blocks 0 and 1, each method deployed, then updated:
slices of 1k / 10k / all of blocks 2-4 (~89k interactions), cut in time order from block 2 on, each from
the same deployed version (a copy of the store); and 20 updates in a row of 2k interactions each.

    OMP_NUM_THREADS=1 python benchmarks/update.py data/sports --json benchmarks/results/update.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from peso.io import write_text

ROOT = Path(__file__).resolve().parents[1]


def peso(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "peso.cli", *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="a tokenized DATA_DIR with 5 blocks (Amazon Sports)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 0], help="0: every later row")
    ap.add_argument("--chain", type=int, default=20, help="updates in a row")
    ap.add_argument("--chain-size", type=int, default=2000)
    ap.add_argument("--methods", nargs="+", default=["peso", "sumlora-all"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out: dict = {"data": str(args.data), "slices": [], "chain": {}, "bytes_per_version": {}}
    df = pl.read_parquet(args.data / "interactions.parquet")
    later = df.filter(pl.col("block") >= 2).select(user_id="user", item_id="item", timestamp="timestamp")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = tmp / "c.yaml"
        cfg.write_text(
            f"data: {{path: {args.data.resolve()}, history: 20, blocks: [0, 1]}}\n"
            "model: {name: tiny, tiny: {hidden: 64, layers: 2, heads: 4, intermediate: 256}, lora: {r: 8, alpha: 16, dropout: 0.0}}\n"
            "train: {lr: 3.0e-3, epochs: 1, continual_epochs: 1, batch_size: 128, warmup_steps: 200}\n"
            "decode: {beam: 50, top_k: 10, batch_size: 128}\n"
            f"methods: [{', '.join(args.methods)}]\nthreads: 1\n"
        )
        out["run_seconds"] = round(peso("run", "--config", str(cfg), "--out", str(tmp / "run")), 1)
        print("run", out["run_seconds"], "s")
        for method in args.methods:
            store = tmp / f"store-{method}"
            peso("deploy", str(tmp / "run"), "--method", method, "--out", str(store))
            for n in args.sizes:
                copy = tmp / f"copy-{method}-{n}"
                shutil.copytree(store, copy)
                path = tmp / f"s{n}.csv"
                (later.head(n) if n else later).write_csv(path)
                seconds = peso("update", str(copy), str(path), "--guard", "none")
                report = json.loads((copy / "versions" / "2" / "report.json").read_text())
                out["slices"].append(
                    {
                        "method": method,
                        "interactions": report["slice"]["interactions"],
                        "seconds": round(seconds, 1),
                        "train_seconds": report["train_seconds"],
                        "update_seconds": report["seconds"],
                        "evaluated_users": report["slice"]["evaluated_users"],
                    }
                )
                print(out["slices"][-1])
                shutil.rmtree(copy)
            times = []
            for k in range(args.chain):
                path = tmp / "chain.csv"
                later.slice(k * args.chain_size, args.chain_size).write_csv(path)
                times.append(round(peso("update", str(store), str(path), "--guard", "none"), 1))
            versions = sorted((store / "versions").iterdir(), key=lambda p: int(p.name))
            out["chain"][method] = {"seconds": times, "second": times[1], "last": times[-1]}
            out["bytes_per_version"][method] = [size(v) for v in versions]
            print(method, out["chain"][method], out["bytes_per_version"][method])
    if args.json:
        write_text(args.json, json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
