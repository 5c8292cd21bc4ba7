"""One block of a dataset as raw interactions (user_id, item_id, timestamp CSV): the slice `peso update` takes
in the worked example of docs/deploy.md and in benchmarks/update.py.

    python scripts/block_slice.py data/quickstart/ml-100k 4 runs/block4.csv     # a release folder or DATA_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

from peso.data.raw import Columns, read_release_folder


def block_rows(data: Path, block: int) -> pl.DataFrame:
    if (data / "stats.json").is_file():
        df = pl.read_parquet(data / "interactions.parquet")
    else:
        df = read_release_folder([data], Columns(None, None, None)).interactions
    rows = df.filter(pl.col("block") == block).select("user", "item", "timestamp")
    return rows.rename({"user": "user_id", "item": "item_id"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="a DATA_DIR or a release folder")
    ap.add_argument("block", type=int)
    ap.add_argument("out", type=Path, help="CSV to write")
    args = ap.parse_args()
    rows = block_rows(args.data, args.block)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows.write_csv(args.out)
    print(f"{rows.height:,} interactions of block {args.block}: {args.out}")


if __name__ == "__main__":
    main()
