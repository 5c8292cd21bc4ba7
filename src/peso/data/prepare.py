"""`peso prepare`: raw logs -> chronological blocks in a DATA_DIR, all columnar (polars).

Steps: read (peso.data.raw) -> sort by time, ties in file order -> drop repeated user-item pairs (the first
stays) -> optional k-core -> cut by global time: block 0 = the first `base_fraction` of interactions,
then `blocks - 1` equal slices of the rest (the cut of scripts/make_quickstart_data.py and of the paper's
release) -> per block, users with at least `min_items` items there are evaluated.

DATA_DIR layout (written to a temp folder beside it, then renamed: never half-written):
- `interactions.parquet`: every kept interaction in time order, columns user (str), item (str),
  timestamp (int64 unix seconds; row order for release input), block (int32), evaluated (bool: the user has
  >= min_items items in this block, so the block lists them). A user's history in block t is all their
  rows of earlier blocks, evaluated or not, as in the release files' previous_block.
- `items.parquet`: item, title, description (null where the input has no text).
- `stats.json`: name, format, inputs, settings, totals, the evaluated blocks, and per block: interactions,
  users, evaluated users, items, new users, new items, time range.
- `index.json`: item -> semantic-ID tokens, only when the input carried one (the release format);
  `peso tokenize` writes it for the others.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from peso.data.raw import Columns, RawData, detect_format, read_raw
from peso.errors import PesoError
from peso.io import atomic_dir, check_out

INTERACTIONS, ITEMS, STATS, INDEX = "interactions.parquet", "items.parquet", "stats.json", "index.json"


@dataclass
class CutSettings:
    """How the log becomes blocks (the paper's release: 0.6, 5 blocks, 3 items)."""

    base_fraction: float = 0.6
    blocks: int = 5
    min_items: int = 3
    kcore: int | None = None

    def check(self) -> None:
        if not 0.0 < self.base_fraction < 1.0:
            raise PesoError("--base-fraction", f"{self.base_fraction} is not between 0 and 1", "e.g. 0.6")
        if self.blocks < 2:
            raise PesoError(
                "--blocks", f"{self.blocks} blocks: a continual run needs a base block and one more", "e.g. 5"
            )
        if self.min_items < 3:
            raise PesoError(
                "--min-items", f"{self.min_items} < 3: a user needs a training, validation and test item"
            )
        if self.kcore is not None and self.kcore < 1:
            raise PesoError("--kcore", f"{self.kcore} is not a positive count", "e.g. 5, or leave it out")


@dataclass
class PreparedData:
    """A cut log in memory: what `write_data_dir` puts on disk."""

    interactions: pl.DataFrame
    items: pl.DataFrame
    index: dict[str, list[str]] | None
    stats: dict


def dedupe(df: pl.DataFrame) -> pl.DataFrame:
    """Time order (ties in file order), then one row per user-item pair: the first, as the release code."""
    return (
        df.with_row_index("_ord")
        .sort(["timestamp", "_ord"])
        .unique(subset=["user", "item"], keep="first", maintain_order=True)
        .drop("_ord")
    )


def kcore(df: pl.DataFrame, k: int) -> pl.DataFrame:
    """Drop users and items with fewer than k interactions until none is left (order kept)."""
    while True:
        kept = df.filter((pl.len().over("user") >= k) & (pl.len().over("item") >= k))
        if kept.height == df.height:
            return kept
        df = kept


def cut_points(n: int, base_fraction: float, blocks: int) -> list[int]:
    """Row boundaries [0, base, ..., n]: base = round(fraction * n), the rest in `blocks - 1` equal slices."""
    base = round(base_fraction * n)
    rest = n - base
    return [0, base] + [base + round(rest * k / (blocks - 1)) for k in range(1, blocks)]


def cut_blocks(df: pl.DataFrame, settings: CutSettings, where: str) -> pl.DataFrame:
    """Add `block` (by row position in time order) and `evaluated` (>= min_items in the block)."""
    cuts = cut_points(df.height, settings.base_fraction, settings.blocks)
    pos = pl.int_range(pl.len(), dtype=pl.Int64)
    block = pl.sum_horizontal([(pos >= c).cast(pl.Int32) for c in cuts[1:-1]]).cast(pl.Int32)
    out = df.with_columns(block.alias("block"))
    out = out.with_columns((pl.len().over(["user", "block"]) >= settings.min_items).alias("evaluated"))
    sizes = [cuts[t + 1] - cuts[t] for t in range(settings.blocks)]
    for t, size in enumerate(sizes):
        if size == 0:
            raise PesoError(
                where,
                f"block {t} is empty after the cut ({df.height} interactions into {settings.blocks} blocks)",
                "use fewer --blocks or more data",
            )
    ev = out.filter("evaluated").group_by("block").agg(pl.col("user").n_unique().alias("n"))
    have = dict(zip(ev["block"].to_list(), ev["n"].to_list(), strict=True))
    for t in range(settings.blocks):
        if not have.get(t):
            raise PesoError(
                where,
                f"block {t} is left without users: nobody has >= {settings.min_items} items in it "
                f"({sizes[t]} interactions)",
                "lower --min-items, use fewer --blocks, or change --base-fraction",
            )
    return out


def _date(ts: int | None, synthetic: bool) -> str | None:
    if ts is None or synthetic:
        return None
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d %H:%M:%S")


def block_stats(df: pl.DataFrame, synthetic_time: bool = False) -> list[dict]:
    """Per block: interactions, users, evaluated users, items, new users/items, time range."""
    first_user = df.group_by("user").agg(pl.col("block").min()).group_by("block").len()
    first_item = df.group_by("item").agg(pl.col("block").min()).group_by("block").len()
    per = (
        df.group_by("block")
        .agg(
            pl.len().alias("interactions"),
            pl.col("user").n_unique().alias("users"),
            pl.col("user").filter(pl.col("evaluated")).n_unique().alias("evaluated_users"),
            pl.col("evaluated").sum().alias("evaluated_interactions"),
            pl.col("item").n_unique().alias("items"),
            pl.col("timestamp").min().alias("t0"),
            pl.col("timestamp").max().alias("t1"),
        )
        .join(first_user.rename({"len": "new_users"}), on="block", how="left")
        .join(first_item.rename({"len": "new_items"}), on="block", how="left")
        .sort("block")
    )
    out = []
    for r in per.iter_rows(named=True):  # one row per block
        out.append(
            {
                "block": r["block"],
                "interactions": r["interactions"],
                "users": r["users"],
                "evaluated_users": r["evaluated_users"],
                "evaluated_interactions": int(r["evaluated_interactions"]),
                "items": r["items"],
                "new_users": r["new_users"] or 0,
                "new_items": r["new_items"] or 0,
                "time_start": None if synthetic_time else r["t0"],
                "time_end": None if synthetic_time else r["t1"],
                "date_start": _date(r["t0"], synthetic_time),
                "date_end": _date(r["t1"], synthetic_time),
            }
        )
    return out


def _item_table(df: pl.DataFrame, items: pl.DataFrame | None) -> pl.DataFrame:
    kept = df.select("item").unique(maintain_order=True)
    schema = {"item": pl.String, "title": pl.String, "description": pl.String}
    if items is None:
        return kept.with_columns(
            pl.lit(None, pl.String).alias("title"), pl.lit(None, pl.String).alias("description")
        )
    text = items.select(schema.keys()).cast(schema).unique(subset="item", keep="first", maintain_order=True)
    return kept.join(text, on="item", how="left").select(schema.keys())


def prepare_data(raw: RawData, settings: CutSettings, fmt: str = "", name: str | None = None) -> PreparedData:
    """Dedupe, k-core and cut `raw` (release input keeps its blocks); nothing is written."""
    settings.check()
    where = ", ".join(raw.sources) or "input"
    df = raw.interactions
    n_read = df.height
    precut = "block" in df.columns
    if precut:
        if settings.kcore:
            raise PesoError("--kcore", "the release format is already cut into blocks", "leave --kcore out")
        cut = df.select("user", "item", "timestamp", pl.col("block").cast(pl.Int32), "evaluated")
        n_dedup = n_read
    else:
        df = dedupe(df.select("user", "item", "timestamp"))
        n_dedup = df.height
        if settings.kcore:
            df = kcore(df, settings.kcore)
            if df.is_empty():
                raise PesoError(
                    where, f"no interaction survives the {settings.kcore}-core filter", "lower --kcore"
                )
        cut = cut_blocks(df, settings, where)
    per_block = block_stats(cut, synthetic_time=precut)
    evaluated = [b["block"] for b in per_block if b["evaluated_users"] > 0]
    stats = {
        "name": name or raw.name or "data",
        "format": fmt,
        "inputs": raw.sources,
        "settings": {**asdict(settings), **({"min_items": None, "base_fraction": None} if precut else {})},
        "timestamps": "row order (the release carries no time)" if precut else "unix seconds",
        "read_interactions": n_read,
        "duplicates_dropped": n_read - n_dedup,
        "kcore_dropped": n_dedup - cut.height,
        "interactions": cut.height,
        "users": cut["user"].n_unique(),
        "items": cut["item"].n_unique(),
        "items_with_title": 0,
        "blocks": evaluated,
        "per_block": per_block,
        "index": bool(raw.index),
    }
    items = _item_table(cut, raw.items)
    stats["items_with_title"] = int(items["title"].is_not_null().sum())
    return PreparedData(interactions=cut, items=items, index=raw.index, stats=stats)


def write_data_dir(
    prep: PreparedData, out: str | Path, overwrite: bool = False, inputs: list[Path] | None = None
) -> Path:
    """Write DATA_DIR atomically: everything goes to a temp folder beside `out`, then one rename."""
    out = Path(out)
    check_out(out, "data", overwrite, inputs or [Path(p) for p in prep.stats.get("inputs", [])])
    with atomic_dir(out, kind="data") as tmp:
        prep.interactions.write_parquet(tmp / INTERACTIONS)
        prep.items.write_parquet(tmp / ITEMS)
        if prep.index:
            (tmp / INDEX).write_text(json.dumps(prep.index, separators=(",", ":")), encoding="utf-8")
        (tmp / STATS).write_text(json.dumps(prep.stats, indent=1) + "\n", encoding="utf-8")
    return out


def prepare(
    inputs: list[str | Path],
    out: str | Path,
    fmt: str = "auto",
    columns: Columns | None = None,
    settings: CutSettings | None = None,
    overwrite: bool = False,
    name: str | None = None,
) -> PreparedData:
    """Read, cut and write a DATA_DIR in one call (what `peso prepare` does)."""
    settings = settings or CutSettings()
    settings.check()
    sources = [Path(p) for p in inputs]
    check_out(Path(out), "data", overwrite, sources)  # before the (possibly long) read
    fmt = detect_format(inputs) if fmt == "auto" else fmt
    raw = read_raw(inputs, fmt, columns)
    prep = prepare_data(raw, settings, fmt, name or raw.name or Path(out).name)
    write_data_dir(prep, out, overwrite, sources)
    return prep
