"""Readers for raw interaction logs: one small function per format, all columnar (polars).

Users arrive with logs, not pre-cut blocks. Every reader turns its files into one `RawData`: an interaction
frame with columns `user` (str), `item` (str), `timestamp` (int64, unix seconds) in file order (files in the
order given), plus an item table `item`, `title`, `description` where the format carries text. The release
format is already cut, so its reader also gives `block` and `evaluated` columns and the semantic-ID index.

Formats (`READERS`):
- `csv`, `tsv`, `parquet`: a table with user, item and timestamp columns, found by name (`--user-col`, ...,
  or common names such as user_id/userId/reviewerID, item_id/movieId/asin, timestamp/time). A file without a
  user column but with an item column and a title or description column is read as the item table.
  Timestamps may be integers, floats, or date strings; integers from 1e11 up are taken as milliseconds.
- `recbole`: atomic files, `<name>.inter` (header `user_id:token ...`) and `<name>.item` (titles), tab-separated.
- `amazon2014`: Amazon Reviews 2014/2018: headerless ratings CSV (2014: user,item,rating,time; 2018:
  item,user,rating,time, told apart by the 10-character ASIN column), 5-core review JSON lines (reviewerID,
  asin, unixReviewTime), metadata JSON lines (asin, title, description; the 2014 Python-literal lines too).
- `amazon2023`: review JSON lines (user_id, parent_asin, timestamp in ms; parent_asin is the item) and
  metadata JSON lines (parent_asin, title, description as a list of strings).
- `movielens`: `u.data` (+ `u.item`), `ratings.dat` (+ `movies.dat`), `ratings.csv` (+ `movies.csv`).
- `release`: a PESO release folder (`<NAME>.all.block_<t>.json[.gz]` + index), blocks kept as they are.

Any file may be gzipped (`.gz`). Every failure is a `PesoError` naming the file and the column or field.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from peso.errors import PesoError

USER_NAMES = ("user_id", "user", "userid", "reviewerid", "uid", "visitorid", "customer_id", "session_id")
ITEM_NAMES = (
    "item_id",
    "item",
    "itemid",
    "movieid",
    "parent_asin",
    "asin",
    "iid",
    "product_id",
    "business_id",
)
TIME_NAMES = ("timestamp", "time", "unixreviewtime", "ts", "datetime", "date", "time_ms")
TITLE_NAMES = ("title", "movie_title", "name", "product_name", "item_name", "product_title")
DESC_NAMES = ("description", "desc", "overview", "plot", "summary")

_BLOCK_FILE = re.compile(r"^.+\.all\.block_\d+\.json(\.gz)?$")
_SKIP = re.compile(r"^(readme|license|licence|notice)|\.md$", re.IGNORECASE)
_NDJSON_CHUNK = 64 << 20  # bytes of JSON lines parsed at once: bounds memory on multi-GB gzipped files


@dataclass
class Columns:
    """Column names chosen on the command line (None: look for the usual names)."""

    user: str | None = None
    item: str | None = None
    time: str | None = None


@dataclass
class RawData:
    """What a reader found: interactions in file order, item text, and (release only) the index."""

    interactions: pl.DataFrame
    items: pl.DataFrame | None = None
    index: dict[str, list[str]] | None = None
    name: str | None = None
    sources: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- helpers


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def first_line(path: Path) -> str:
    """The first line of a (possibly gzipped) text file, '' for an empty one."""
    try:
        with _open_text(path) as f:
            return f.readline().rstrip("\r\n")
    except (OSError, EOFError) as e:
        raise PesoError(
            str(path), f"cannot be read ({e.__class__.__name__})", "check the file is complete"
        ) from None


def _stem(path: Path) -> str:
    """File name without .gz and without its last extension: 'reviews_Beauty_5.json.gz' -> 'reviews_Beauty_5'."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return name.rsplit(".", 1)[0] if "." in name else name


def _ext(path: Path) -> str:
    name = path.name.lower()
    name = name[:-3] if name.endswith(".gz") else name
    return name.rsplit(".", 1)[-1] if "." in name else ""


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else e.__class__.__name__


def _pick(columns: list[str], wanted: str | None, names: tuple[str, ...]) -> str | None:
    """The column named `wanted` (exact), else the first of the usual `names` (case-insensitive)."""
    if wanted is not None:
        return wanted if wanted in columns else None
    lower = {c.lower(): c for c in reversed(columns)}
    return next((lower[n] for n in names if n in lower), None)


def _require(
    columns: list[str], wanted: str | None, names: tuple[str, ...], what: str, flag: str, path: Path
) -> str:
    col = _pick(columns, wanted, names)
    if col is None:
        looked = f"'{wanted}'" if wanted else "/".join(names[:4])
        raise PesoError(
            str(path),
            f"no {what} column ({looked}); columns are {columns}",
            f"name the {what} column with {flag}",
        )
    return col


def _check_ids(df: pl.DataFrame, path: Path, source: dict[str, str]) -> None:
    for col in ("user", "item"):
        if col not in df.columns:
            continue
        bad = df[col].is_null() | (df[col].str.strip_chars() == "")
        if bad.any():
            row = int(bad.arg_true()[0]) + 1
            raise PesoError(
                str(path), f"column '{source[col]}': empty {col} id at data row {row}", "fill or drop the row"
            )


def to_unix_seconds(values: pl.Series, path: Path, column: str, unit: str = "auto") -> pl.Series:
    """Timestamps as int64 unix seconds: integers (ms from 1e11 up, or always with unit='ms'), floats, dates."""

    def fail(mask: pl.Series, what: str) -> PesoError:
        row = int(mask.arg_true()[0])
        return PesoError(
            str(path),
            f"column '{column}': {what} '{values[row]}' at data row {row + 1}",
            "give unix seconds, milliseconds or ISO dates",
        )

    s = values
    if s.dtype == pl.String:
        s = s.str.strip_chars()
        empty = s.is_null() | (s == "")
    else:
        empty = s.is_null()
    if empty.any():
        row = int(empty.arg_true()[0])
        raise PesoError(
            str(path), f"column '{column}': empty timestamp at data row {row + 1}", "fill or drop the row"
        )
    if s.dtype.is_integer():
        out = s.cast(pl.Int64)
    elif s.dtype.is_float():
        out = s.floor().cast(pl.Int64, strict=False)
        if out.is_null().any():
            raise fail(out.is_null(), "unparsable timestamp")
    elif s.dtype == pl.Date:
        return s.cast(pl.Datetime("us")).dt.epoch("s").cast(pl.Int64)
    elif s.dtype == pl.Datetime:
        return s.dt.epoch("s").cast(pl.Int64)
    elif s.dtype == pl.String:
        if s.head(1).cast(pl.Float64, strict=False).is_null().all():  # not a number: dates
            try:
                dt = s.str.to_datetime(strict=False)
            except pl.exceptions.PolarsError:
                raise fail(s.is_not_null(), "unparsable timestamp") from None
            if dt.is_null().any():
                raise fail(dt.is_null(), "unparsable timestamp")
            return dt.dt.epoch("s").cast(pl.Int64)
        out = s.cast(pl.Int64, strict=False)
        if out.is_null().any():
            out = out.fill_null(s.cast(pl.Float64, strict=False).floor().cast(pl.Int64, strict=False))
        if out.is_null().any():
            raise fail(out.is_null(), "unparsable timestamp")
    else:
        raise PesoError(
            str(path), f"column '{column}' has type {s.dtype}, not a timestamp", "give unix seconds or dates"
        )
    if unit == "ms" or (unit == "auto" and len(out) and int(out.min()) >= 10**11):
        out = out // 1000
    return out


def _read_csv(path: Path, **kwargs) -> pl.DataFrame:
    """pl.read_csv with every failure as a PesoError naming the file."""
    try:
        return pl.read_csv(path, infer_schema=False, **kwargs)
    except pl.exceptions.NoDataError:
        raise PesoError(str(path), "empty file", "give a file with a header and at least one row") from None
    except (pl.exceptions.PolarsError, OSError) as e:
        raise PesoError(
            str(path), f"cannot be parsed as CSV ({_one_line(e)})", "check the separator and quoting"
        ) from None


def _read_lines(path: Path, encoding: str = "utf-8") -> pl.Series:
    """Every line of a text file as one string column (for '::' and '|' separated files, and odd encodings)."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            text = f.read().decode(encoding, errors="replace")
    except (OSError, EOFError) as e:
        raise PesoError(
            str(path), f"cannot be read ({e.__class__.__name__})", "check the file is complete"
        ) from None
    lines = pl.Series("line", text.splitlines(), dtype=pl.String)
    lines = lines.filter(lines.str.strip_chars() != "")
    if lines.is_empty():
        raise PesoError(str(path), "empty file", "give a file with at least one row")
    return lines


def _split(lines: pl.Series, sep: str, names: list[str], path: Path) -> pl.DataFrame:
    parts = lines.str.split(sep)
    short = parts.list.len() < len(names)
    if short.any():
        row = int(short.arg_true()[0])
        raise PesoError(
            str(path),
            f"line {row + 1} has fewer than {len(names)} '{sep}'-separated fields",
            "check the file",
        )
    return pl.DataFrame({n: parts.list.get(i) for i, n in enumerate(names)})


def _read_ndjson(path: Path, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """JSON lines, only the fields in `schema` (absent fields come back as nulls), in bounded-memory chunks."""
    frames = []
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            while chunk := f.read(_NDJSON_CHUNK):
                chunk += f.readline()
                if chunk.strip():
                    frames.append(pl.read_ndjson(io.BytesIO(chunk), schema=schema))
    except pl.exceptions.PolarsError as e:
        raise PesoError(
            str(path), f"malformed JSON line ({_one_line(e)})", "give one JSON object per line"
        ) from None
    except (OSError, EOFError) as e:
        raise PesoError(
            str(path), f"cannot be read ({e.__class__.__name__})", "check the file is complete"
        ) from None
    if not frames:
        raise PesoError(str(path), "empty file", "give a file with at least one JSON line")
    return pl.concat(frames)


def _need_fields(df: pl.DataFrame, fields: list[str], path: Path) -> None:
    for name in fields:
        if df[name].is_null().all():
            raise PesoError(
                str(path), f"no field '{name}' in its JSON lines", "give the review file of this format"
            )
        missing = df[name].is_null()
        if missing.any():
            row = int(missing.arg_true()[0])
            raise PesoError(str(path), f"field '{name}' missing at line {row + 1}", "fill or drop the line")


def _text(col: pl.Series) -> pl.Series:
    """Description fields: a JSON list of strings (2018, 2023) becomes one space-joined string."""
    col = col.cast(pl.String)
    is_list = col.str.starts_with("[").fill_null(False)
    if not is_list.any():
        return col
    joined = col.filter(is_list).str.json_decode(pl.List(pl.String)).list.join(" ")
    return col.scatter(is_list.arg_true(), joined)


def _items_frame(item: pl.Series, title: pl.Series | None, desc: pl.Series | None) -> pl.DataFrame:
    n = len(item)
    none = pl.Series([None] * n, dtype=pl.String)
    out = pl.DataFrame(
        {
            "item": item.cast(pl.String),
            "title": none if title is None else title.cast(pl.String),
            "description": none if desc is None else _text(desc),
        }
    )
    for c in ("title", "description"):
        out = out.with_columns(
            pl.when(pl.col(c).str.strip_chars() == "").then(None).otherwise(pl.col(c)).alias(c)
        )
    return out.filter(pl.col("item").is_not_null())


def _interactions(
    df: pl.DataFrame, path: Path, user: str, item: str, time: str, unit: str = "auto"
) -> pl.DataFrame:
    ids = df.select(pl.col(user).cast(pl.String).alias("user"), pl.col(item).cast(pl.String).alias("item"))
    _check_ids(ids, path, {"user": user, "item": item})
    return ids.with_columns(to_unix_seconds(df[time], path, time, unit).alias("timestamp"))


def _combine(
    parts: list[pl.DataFrame], items: list[pl.DataFrame], inputs: list[Path], sources: list[str]
) -> RawData:
    if not parts:
        raise PesoError(
            ", ".join(str(p) for p in inputs),
            "no interaction file among the inputs",
            "give a file with user, item and timestamp columns (or pick --format)",
        )
    inter = pl.concat(parts)
    if inter.is_empty():
        raise PesoError(", ".join(sources), "no interactions (the files hold a header only)", "give rows")
    table = pl.concat(items) if items else None
    ignored = [str(p) for p in inputs if str(p) not in sources]
    return RawData(interactions=inter, items=table, sources=sources, ignored=ignored)


# ---------------------------------------------------------------------------------------------- readers


def _table(path: Path, sep: str | None) -> pl.DataFrame:
    if _ext(path) == "parquet":
        try:
            return pl.read_parquet(path)
        except (pl.exceptions.PolarsError, OSError) as e:
            raise PesoError(
                str(path), f"cannot be read as Parquet ({_one_line(e)})", "check the file"
            ) from None
    if sep is None:
        head = first_line(path)
        sep = "\t" if head.count("\t") > head.count(",") else ","
    return _read_csv(path, separator=sep)


def _table_parts(paths: list[Path], cols: Columns, sep: str | None) -> tuple[list, list, list[str]]:
    """Per file: an interaction frame (user, item, timestamp columns) or an item table (item + text)."""
    parts, items, sources = [], [], []
    for path in paths:
        df = _table(path, sep)
        names = df.columns
        user = _pick(names, cols.user, USER_NAMES)
        if (
            user is None
            and _pick(names, cols.item, ITEM_NAMES)
            and (_pick(names, None, TITLE_NAMES) or _pick(names, None, DESC_NAMES))
        ):
            item = _pick(names, cols.item, ITEM_NAMES)
            title, desc = _pick(names, None, TITLE_NAMES), _pick(names, None, DESC_NAMES)
            items.append(_items_frame(df[item], df[title] if title else None, df[desc] if desc else None))
            sources.append(str(path))
            continue
        user = _require(names, cols.user, USER_NAMES, "user", "--user-col", path)
        item = _require(names, cols.item, ITEM_NAMES, "item", "--item-col", path)
        time = _require(names, cols.time, TIME_NAMES, "timestamp", "--time-col", path)
        parts.append(_interactions(df, path, user, item, time))
        sources.append(str(path))
    return parts, items, sources


def _read_tables(paths: list[Path], cols: Columns, sep: str | None) -> RawData:
    parts, items, sources = _table_parts(paths, cols, sep)
    return _combine(parts, items, paths, sources)


def read_csv_files(paths: list[Path], cols: Columns) -> RawData:
    """CSV (separator sniffed from the header line: tab or comma) interactions plus optional item table."""
    return _read_tables(paths, cols, None)


def read_tsv_files(paths: list[Path], cols: Columns) -> RawData:
    """Tab-separated interactions plus optional item table."""
    return _read_tables(paths, cols, "\t")


def read_parquet_files(paths: list[Path], cols: Columns) -> RawData:
    """Parquet interactions plus optional item table."""
    return _read_tables(paths, cols, None)


def read_recbole(paths: list[Path], cols: Columns) -> RawData:
    """RecBole atomic files: `.inter` interactions and `.item` text (a sibling `.item` is found on its own)."""
    inter = [p for p in paths if _ext(p) == "inter"]
    item_files = [p for p in paths if _ext(p) == "item"]
    for p in inter:
        sibling = p.with_name(_stem(p) + ".item")
        if sibling.is_file() and sibling not in item_files:
            item_files.append(sibling)
    parts, items, sources = [], [], []
    for path in inter:
        df = _read_csv(path, separator="\t", quote_char=None)
        df = df.rename({c: c.split(":", 1)[0] for c in df.columns})
        user = _require(df.columns, cols.user, USER_NAMES, "user", "--user-col", path)
        item = _require(df.columns, cols.item, ITEM_NAMES, "item", "--item-col", path)
        time = _require(df.columns, cols.time, TIME_NAMES, "timestamp", "--time-col", path)
        parts.append(_interactions(df, path, user, item, time))
        sources.append(str(path))
    for path in item_files:
        df = _read_csv(path, separator="\t", quote_char=None)
        df = df.rename({c: c.split(":", 1)[0] for c in df.columns})
        item = _require(df.columns, cols.item, ITEM_NAMES, "item", "--item-col", path)
        title, desc = _pick(df.columns, None, TITLE_NAMES), _pick(df.columns, None, DESC_NAMES)
        items.append(_items_frame(df[item], df[title] if title else None, df[desc] if desc else None))
        sources.append(str(path))
    return _combine(parts, items, paths, sources)


def _json_keys(path: Path) -> set[str]:
    line = first_line(path)
    try:
        obj = json.loads(line)
        return set(obj) if isinstance(obj, dict) else set()
    except json.JSONDecodeError:  # 2014 metadata lines are Python literals: {'asin': '...', ...}
        return set(re.findall(r"'(\w+)':", line))


def _asin_share(col: pl.Series) -> float:
    return float(col.str.contains(r"^[0-9A-Z]{10}$").mean() or 0.0)


def _amazon_ratings(path: Path) -> pl.DataFrame:
    df = _read_csv(path, has_header=False)
    if df.width != 4:
        raise PesoError(
            str(path),
            f"{df.width} columns, expected 4 (user,item,rating,timestamp) without header",
            "give the ratings-only CSV, or use --format csv for other tables",
        )
    a, b = df.columns[0], df.columns[1]
    user, item = (b, a) if _asin_share(df[a]) > _asin_share(df[b]) else (a, b)  # 2018 lists the item first
    return _interactions(df, path, user, item, df.columns[3])


def _python_meta(path: Path, key: str) -> pl.DataFrame:
    """2014 metadata lines are Python dict literals, not JSON: pull asin/title/description by pattern."""
    lines = _read_lines(path)

    def field_of(name: str) -> pl.Series:
        single = lines.str.extract(rf"'{name}': '((?:[^'\\]|\\.)*)'", 1)
        double = lines.str.extract(rf"'{name}': \"((?:[^\"\\]|\\.)*)\"", 1)
        out = single.fill_null(double)
        for old, new in ((r"\'", "'"), (r"\"", '"'), (r"\n", " "), (r"\t", " "), ("\\\\", "\\")):
            out = out.str.replace_all(old, new, literal=True)
        return out

    item = field_of(key)
    if item.is_null().all():
        raise PesoError(str(path), f"no field '{key}' in its lines", "give the metadata file of this format")
    return _items_frame(item, field_of("title"), field_of("description"))


def read_amazon2014(paths: list[Path], cols: Columns) -> RawData:
    """Amazon 2014/2018: ratings CSV (no header), 5-core review JSON lines, metadata JSON lines."""
    parts, items, sources = [], [], []
    for path in paths:
        if _ext(path) in ("json", "jsonl", "ndjson"):
            keys = _json_keys(path)
            if "reviewerID" in keys or "unixReviewTime" in keys:
                df = _read_ndjson(
                    path, {"reviewerID": pl.String, "asin": pl.String, "unixReviewTime": pl.String}
                )
                _need_fields(df, ["reviewerID", "asin", "unixReviewTime"], path)
                parts.append(_interactions(df, path, "reviewerID", "asin", "unixReviewTime"))
            elif "asin" in keys:
                if first_line(path).lstrip().startswith("{'"):
                    items.append(_python_meta(path, "asin"))
                else:
                    df = _read_ndjson(path, {"asin": pl.String, "title": pl.String, "description": pl.String})
                    items.append(_items_frame(df["asin"], df["title"], df["description"]))
            elif not keys:
                raise PesoError(str(path), "empty file or not JSON lines", "give one JSON object per line")
            else:
                raise PesoError(
                    str(path),
                    f"JSON lines without reviewerID/asin (fields {sorted(keys)[:8]})",
                    "give the 5-core review file or the metadata file",
                )
        elif _ext(path) in ("csv", "txt", ""):
            parts.append(_amazon_ratings(path))
        else:
            continue
        sources.append(str(path))
    return _combine(parts, items, paths, sources)


def read_amazon2023(paths: list[Path], cols: Columns) -> RawData:
    """Amazon 2023: review JSON lines (user_id, parent_asin, timestamp ms) and metadata JSON lines."""
    parts, items, sources = [], [], []
    for path in paths:
        if _ext(path) not in ("json", "jsonl", "ndjson"):
            continue
        keys = _json_keys(path)
        if not keys:
            raise PesoError(str(path), "empty file or not JSON lines", "give one JSON object per line")
        if "user_id" in keys:
            df = _read_ndjson(path, {"user_id": pl.String, "parent_asin": pl.String, "timestamp": pl.String})
            _need_fields(df, ["user_id", "parent_asin", "timestamp"], path)
            parts.append(_interactions(df, path, "user_id", "parent_asin", "timestamp", unit="ms"))
        elif "parent_asin" in keys:
            df = _read_ndjson(path, {"parent_asin": pl.String, "title": pl.String, "description": pl.String})
            items.append(_items_frame(df["parent_asin"], df["title"], df["description"]))
        else:
            raise PesoError(
                str(path),
                f"JSON lines without user_id or parent_asin (fields {sorted(keys)[:8]})",
                "give the review file (user_id, parent_asin, timestamp) or the metadata file",
            )
        sources.append(str(path))
    return _combine(parts, items, paths, sources)


def read_movielens(paths: list[Path], cols: Columns) -> RawData:
    """MovieLens: u.data/u.item (100k), ratings.dat/movies.dat (1M, 10M), ratings.csv/movies.csv (20M, 25M...)."""
    parts, items, sources = [], [], []
    names = ["user", "item", "rating", "timestamp"]
    for path in paths:
        name = path.name.lower().removesuffix(".gz")
        if name == "u.data":
            df = _read_csv(path, separator="\t", has_header=False, quote_char=None, new_columns=names)
            parts.append(_interactions(df, path, "user", "item", "timestamp"))
        elif name == "ratings.dat":
            df = _split(_read_lines(path), "::", names, path)
            parts.append(_interactions(df, path, "user", "item", "timestamp"))
        elif name == "u.item":
            df = _split(_read_lines(path, "latin-1"), "|", ["item", "title"], path)
            items.append(_items_frame(df["item"], df["title"], None))
        elif name == "movies.dat":
            df = _split(_read_lines(path, "latin-1"), "::", ["item", "title"], path)
            items.append(_items_frame(df["item"], df["title"], None))
        elif name in ("ratings.csv", "movies.csv"):
            more, text, _ = _table_parts([path], cols, ",")
            parts, items = parts + more, items + text
        else:
            continue
        sources.append(str(path))
    return _combine(parts, items, paths, sources)


RELEASE_MIN_ITEMS = 3  # the release lists a user in a block only with >= 3 items there


def read_release_folder(paths: list[Path], cols: Columns) -> RawData:
    """A PESO release folder, blocks kept: rows per block in file order, `evaluated` for current_block items.

    A user's previous_block must extend their items of the earlier files; items beyond that (the user had
    fewer than the minimum in some block, or the base block file is missing) go to the block before, as
    history only (not evaluated). Timestamps are synthetic (row order): the release carries no time.
    """
    from peso.data.release import read_release

    folders = sorted({p if p.is_dir() else p.parent for p in paths})
    if len(folders) != 1:
        raise PesoError(", ".join(map(str, folders)), "several release folders", "give one release folder")
    data = read_release(folders[0])
    users: list[str] = []
    items: list[str] = []
    blocks: list[int] = []
    evaluated: list[bool] = []
    seen: dict[str, list[str]] = {}
    last_block: dict[str, int] = {}
    for b in data.blocks:
        for user, prev, cur in zip(b.users, b.previous, b.current, strict=True):
            known = seen.get(user, [])
            if prev[: len(known)] != known or (
                len(prev) > len(known) and last_block.get(user) == b.number - 1
            ):
                raise PesoError(
                    b.source,
                    f"user {user}: previous_block does not extend the user's items of earlier blocks",
                    "give release files cut from one log",
                )
            extra = prev[len(known) :]
            n = len(extra) + len(cur)
            users += [user] * n
            items += extra + cur
            blocks += [b.number - 1] * len(extra) + [b.number] * len(cur)
            # a user listed with fewer than 3 items (`peso export` keeps every interaction) is history only
            evaluated += [False] * len(extra) + [len(cur) >= RELEASE_MIN_ITEMS] * len(cur)
            seen[user] = prev + cur
            last_block[user] = b.number
    df = pl.DataFrame(
        {"user": users, "item": items, "block": blocks, "evaluated": evaluated},
        schema={"user": pl.String, "item": pl.String, "block": pl.Int32, "evaluated": pl.Boolean},
    )
    # rows sorted by block (stable): a reader taking items in row order gets each user's sequence back
    df = df.with_row_index("_r").sort(["block", "_r"]).drop("_r")
    df = df.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("timestamp")).select(
        "user", "item", "timestamp", "block", "evaluated"
    )
    return RawData(interactions=df, index=data.index, name=data.name, sources=[str(folders[0])])


Reader = Callable[[list[Path], Columns], RawData]

READERS: dict[str, Reader] = {
    "csv": read_csv_files,
    "tsv": read_tsv_files,
    "parquet": read_parquet_files,
    "recbole": read_recbole,
    "amazon2014": read_amazon2014,
    "amazon2023": read_amazon2023,
    "movielens": read_movielens,
    "release": read_release_folder,
}
FORMATS = ["auto", *READERS]


# ---------------------------------------------------------------------------------------------- detection


def _is_release_dir(path: Path) -> bool:
    return path.is_dir() and any(_BLOCK_FILE.match(p.name) for p in path.iterdir())


def expand_inputs(paths: list[str | Path]) -> list[Path]:
    """Inputs as files: a folder stands for its files (not sub-folders, not README/LICENSE); a release folder stays."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise PesoError(str(p), "input not found", "check the path")
        if p.is_dir() and not _is_release_dir(p):
            files = [
                f
                for f in sorted(p.iterdir())
                if f.is_file() and not f.name.startswith(".") and not _SKIP.search(f.name)
            ]
            if not files:
                raise PesoError(str(p), "folder holds no data files", "give the files or another folder")
            out += files
        else:
            out.append(p)
    return out


def _headerless_ratings(line: str) -> bool:
    fields = next(csv.reader([line]), [])
    if len(fields) != 4:
        return False
    try:
        float(fields[2])
        float(fields[3])
    except ValueError:
        return False
    return True


def _kind(path: Path) -> str | None:
    """What one file looks like on its own, None if it tells nothing."""
    name, ext = path.name.lower().removesuffix(".gz"), _ext(path)
    if path.is_dir() or _BLOCK_FILE.match(path.name):
        return "release"
    if name in ("u.data", "ratings.dat", "u.item", "movies.dat"):
        return "movielens"
    if ext in ("inter", "item"):
        return "recbole"
    if ext == "parquet":
        return "parquet"
    if ext in ("json", "jsonl", "ndjson"):
        keys = _json_keys(path)
        if "parent_asin" in keys:  # 2023 reviews (user_id, parent_asin) and 2023 metadata
            return "amazon2023"
        if "reviewerID" in keys or "asin" in keys:
            return "amazon2014"
        return None
    if ext in ("csv", "tsv", "txt", "dat", ""):
        head = first_line(path)
        if name in ("ratings.csv", "movies.csv") and ("movieId" in head):
            return "movielens"
        if ext != "tsv" and _headerless_ratings(head):
            return "amazon2014"
        return "tsv" if ext == "tsv" or head.count("\t") > head.count(",") else "csv"
    return None


def detect_format(paths: list[str | Path]) -> str:
    """Guess the format of the inputs from names and first lines; a PesoError when they disagree or tell nothing."""
    files = expand_inputs(paths)
    kinds = {k for k in (_kind(p) for p in files) if k is not None}
    for strong in ("release", "recbole", "movielens", "amazon2023", "amazon2014", "parquet"):
        if strong in kinds and (kinds <= {strong, "csv", "tsv"} or strong == "release"):
            return strong
    if kinds == {"csv", "tsv"}:
        return "csv"  # the csv reader sniffs the separator per file
    if len(kinds) == 1:
        return kinds.pop()
    where = ", ".join(str(p) for p in paths)
    if not kinds:
        raise PesoError(where, "cannot tell the input format", f"pass --format (one of {', '.join(READERS)})")
    raise PesoError(
        where, f"inputs look like several formats {sorted(kinds)}", "give one dataset, or pass --format"
    )


def read_raw(paths: list[str | Path], fmt: str = "auto", columns: Columns | None = None) -> RawData:
    """Read the inputs in `fmt` (or the detected format) into interactions, item text and (release) index."""
    if fmt != "auto" and fmt not in READERS:
        raise PesoError("--format", f"unknown format '{fmt}'", f"use one of {', '.join(FORMATS)}")
    fmt = detect_format(paths) if fmt == "auto" else fmt
    files = [Path(p) for p in paths] if fmt == "release" else expand_inputs(paths)
    return READERS[fmt](files, columns or Columns())
