"""Read a DATA_DIR written by `peso prepare` into the in-memory `BlockSet` the runner uses.

Block t lists every user with an `evaluated` row in block t (>= min_items items there), in order of their
first interaction in the block; `current` = their block-t items, `previous` = all their items of earlier
blocks (evaluated there or not), both in time order: the release files' previous_block/current_block.
The layout is described in peso.data.prepare.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from peso.data.blocks import Block, BlockSet, select_blocks
from peso.data.prepare import INDEX, INTERACTIONS, ITEMS, STATS
from peso.data.release import read_index_file
from peso.errors import PesoError

_COLUMNS = {"user": pl.String, "item": pl.String, "block": pl.Int32, "evaluated": pl.Boolean}


def read_stats(data_dir: str | Path) -> dict:
    """stats.json of a DATA_DIR."""
    path = Path(data_dir) / STATS
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PesoError(str(path), "not found: not a DATA_DIR", "run `peso prepare` first") from None
    except (json.JSONDecodeError, OSError, UnicodeDecodeError) as e:
        raise PesoError(
            str(path), f"cannot be read ({e.__class__.__name__})", "run `peso prepare` again"
        ) from None
    if not isinstance(stats, dict) or not isinstance(stats.get("blocks"), list):
        raise PesoError(str(path), "no 'blocks' list", "run `peso prepare` again")
    return stats


def read_interactions(data_dir: str | Path) -> pl.DataFrame:
    """interactions.parquet with its columns checked."""
    path = Path(data_dir) / INTERACTIONS
    if not path.is_file():
        raise PesoError(str(path), "not found", "run `peso prepare` again")
    try:
        df = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise PesoError(
            str(path), f"cannot be read ({e.__class__.__name__})", "run `peso prepare` again"
        ) from None
    missing = [c for c in _COLUMNS if c not in df.columns]
    if missing:
        raise PesoError(str(path), f"missing column(s) {missing}", "run `peso prepare` again")
    return df.select([pl.col(c).cast(t) for c, t in _COLUMNS.items()])


def _block(df: pl.DataFrame, t: int, source: str, every_user: bool = False) -> Block:
    rows = df.filter(pl.col("block") == t)
    users = (rows if every_user else rows.filter("evaluated")).select("user").unique(maintain_order=True)
    mine = df.join(users, on="user", how="semi")
    cur = mine.filter(pl.col("block") == t).group_by("user", maintain_order=True).agg(pl.col("item"))
    prev = mine.filter(pl.col("block") < t).group_by("user").agg(pl.col("item").sort_by("_r").alias("prev"))
    both = cur.with_row_index("_o").join(prev, on="user", how="left").sort("_o")
    previous = [p if p is not None else [] for p in both["prev"].to_list()]  # users without history
    return Block(
        number=t,
        users=both["user"].to_list(),
        previous=previous,
        current=both["item"].to_list(),
        source=source,
    )


def read_prepared(
    data_dir: str | Path, blocks: list[int] | None = None, every_user: bool = False
) -> BlockSet:
    """Blocks (all evaluated ones, or `blocks`) and the index if the DATA_DIR has one (else an empty index).
    `every_user`: each block lists every user with an interaction in it, evaluated or not (an export keeps
    every interaction)."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise PesoError(str(folder), "data folder not found", "set data.path to a DATA_DIR or release folder")
    stats = read_stats(folder)
    if not (folder / ITEMS).is_file():  # every DATA_DIR has it; without it the folder is damaged
        raise PesoError(
            str(folder / ITEMS), "not found (item titles and descriptions)", "run `peso prepare` again"
        )
    found = [int(t) for t in stats["blocks"]]
    numbers = select_blocks(found, blocks, folder)
    df = read_interactions(folder).with_row_index("_r")
    source = str(folder / INTERACTIONS)
    index: dict[str, list[str]] = {}
    index_path = folder / INDEX
    if index_path.is_file():
        index = read_index_file(index_path)
        unknown = df.filter(~pl.col("item").is_in(list(index)))
        if not unknown.is_empty():
            item, user = unknown["item"][0], unknown["user"][0]
            raise PesoError(
                source,
                f"user {user}: item {item} is not in the index {INDEX} ({unknown['item'].n_unique()} such items)",
                "re-tokenize the items",
            )
    block_list = [_block(df, t, source, every_user) for t in numbers]
    for b in block_list:
        if not b.users:
            raise PesoError(source, f"block {b.number} has no evaluated user", "run `peso prepare` again")
    return BlockSet(
        name=str(stats.get("name") or folder.name),
        blocks=block_list,
        index=index,
        index_source=str(index_path) if index else "",
        meta=stats,
    )
