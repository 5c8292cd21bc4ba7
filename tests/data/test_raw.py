"""Raw-log readers: each format on a small hand-made file (gzip, columns in another order), and detection."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from peso.data.raw import Columns, detect_format, read_raw
from peso.errors import PesoError

# (user, item, unix seconds) in file order
ROWS = [("u1", "i1", 100), ("u2", "i2", 110), ("u1", "i3", 120), ("u3", "i1", 130)]


def write(path: Path, text: str, gz: bool = False, encoding: str = "utf-8") -> Path:
    data = text.encode(encoding)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def triples(df: pl.DataFrame) -> list[tuple[str, str, int]]:
    assert (
        df.schema["user"] == pl.String
        and df.schema["item"] == pl.String
        and df.schema["timestamp"] == pl.Int64
    )
    return list(df.select("user", "item", "timestamp").iter_rows())


def titles(raw) -> dict[str, tuple[str | None, str | None]]:
    return {r["item"]: (r["title"], r["description"]) for r in raw.items.iter_rows(named=True)}


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# ------------------------------------------------------------------------------------------------ generic


@pytest.mark.parametrize("gz", [False, True])
def test_csv_columns_in_another_order_with_item_table(tmp_path, gz):
    body = "timestamp,rating,item_id,user_id\n" + "".join(f"{t},5,{i},{u}\n" for u, i, t in ROWS)
    inter = write(tmp_path / ("log.csv.gz" if gz else "log.csv"), body, gz)
    items = write(tmp_path / "items.csv", 'item_id,title\ni1,"Red, shoes"\ni3,Hat\n')
    assert detect_format([inter, items]) == "csv"
    assert detect_format([tmp_path]) == "csv"  # a folder stands for its files
    raw = read_raw([tmp_path])
    assert triples(raw.interactions) == ROWS
    assert titles(raw) == {"i1": ("Red, shoes", None), "i3": ("Hat", None)}


def test_tsv_named_columns_and_dates(tmp_path):
    body = "when\twho\twhat\n" + "".join(
        f"1970-01-01 00:0{t // 60}:{t % 60:02d}\t{u}\t{i}\n" for u, i, t in ROWS
    )
    path = write(tmp_path / "log.tsv", body)
    assert detect_format([path]) == "tsv"
    raw = read_raw([path], "tsv", Columns(user="who", item="what", time="when"))
    assert triples(raw.interactions) == ROWS


def test_milliseconds_and_floats_become_seconds(tmp_path):
    ms = write(tmp_path / "ms.csv", "user_id,item_id,timestamp\nu1,i1,1600000000123\nu1,i2,1600000001999\n")
    assert read_raw([ms], "csv").interactions["timestamp"].to_list() == [1600000000, 1600000001]
    fl = write(tmp_path / "fl.csv", "user_id,item_id,timestamp\nu1,i1,881250949.0\nu1,i2,881250950.7\n")
    assert read_raw([fl], "csv").interactions["timestamp"].to_list() == [881250949, 881250950]


def test_parquet(tmp_path):
    df = pl.DataFrame(
        {"item_id": [1, 2, 3, 1], "user_id": ["u1", "u2", "u1", "u3"], "timestamp": [100, 110, 120, 130]}
    )
    path = tmp_path / "log.parquet"
    df.write_parquet(path)
    assert detect_format([path]) == "parquet"
    raw = read_raw([path], "parquet")
    assert triples(raw.interactions) == [(u, i.replace("i", ""), t) for u, i, t in ROWS]


# ------------------------------------------------------------------------------------------------ RecBole


def test_recbole_inter_finds_its_item_file(tmp_path):
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    inter = write(tmp_path / "toy.inter", header + "".join(f"{u}\t{i}\t3\t{t}.0\n" for u, i, t in ROWS))
    write(
        tmp_path / "toy.item",
        'item_id:token\tmovie_title:token_seq\trelease_year:token\ni1\tToy "Story"\t1995\n',
    )
    assert detect_format([inter]) == "recbole"
    raw = read_raw([inter])
    assert triples(raw.interactions) == ROWS
    assert titles(raw) == {"i1": ('Toy "Story"', None)}


# ------------------------------------------------------------------------------------------------ Amazon


def test_amazon2014_ratings_csv_gz_no_header(tmp_path):
    path = write(
        tmp_path / "ratings_Beauty.csv.gz", "".join(f"{u},{i},5.0,{t}\n" for u, i, t in ROWS), gz=True
    )
    assert detect_format([path]) == "amazon2014"
    assert triples(read_raw([path]).interactions) == ROWS


def test_amazon2018_ratings_item_first_told_by_the_asin(tmp_path):
    rows = [("A2SUAM1J3GNN3B", "B00004U9UY", 100), ("A1YJEY40YUW4SE", "7806397051", 110)]
    path = write(tmp_path / "Beauty.csv", "".join(f"{i},{u},4.0,{t}\n" for u, i, t in rows))
    assert triples(read_raw([path], "amazon2014").interactions) == rows


def test_amazon2014_5core_json_and_metadata(tmp_path):
    reviews = [
        {"reviewerID": u, "asin": i, "overall": 5.0, "unixReviewTime": t, "reviewText": "ok"}
        for u, i, t in ROWS
    ]
    rev = write(tmp_path / "reviews_Beauty_5.json.gz", jsonl(reviews), gz=True)
    # 2014 metadata lines are Python literals, not JSON
    meta = write(
        tmp_path / "meta_Beauty.json.gz",
        "{'asin': 'i1', 'title': \"Kid's hat\", 'description': 'Warm', 'price': 3.5}\n{'asin': 'i3', 'title': 'Scarf'}\n",
        gz=True,
    )
    assert detect_format([rev, meta]) == "amazon2014"
    raw = read_raw([rev, meta])
    assert triples(raw.interactions) == ROWS
    assert titles(raw) == {"i1": ("Kid's hat", "Warm"), "i3": ("Scarf", None)}


def test_amazon2018_json_metadata_description_list(tmp_path):
    rev = write(
        tmp_path / "Beauty_5.json",
        jsonl([{"reviewerID": u, "asin": i, "unixReviewTime": t} for u, i, t in ROWS]),
    )
    meta = write(
        tmp_path / "meta_Beauty.json",
        jsonl([{"asin": "i2", "title": "Soap", "description": ["Mild", "soap."]}]),
    )
    raw = read_raw([rev, meta], "amazon2014")
    assert titles(raw) == {"i2": ("Soap", "Mild soap.")}


@pytest.mark.parametrize("gz", [False, True])
def test_amazon2023_reviews_and_metadata(tmp_path, gz):
    ext = ".jsonl.gz" if gz else ".jsonl"
    reviews = [
        {
            "rating": 5.0,
            "asin": f"x{i}",
            "parent_asin": i,
            "user_id": u,
            "timestamp": t * 1000 + 999,
            "text": ".",
        }
        for u, i, t in ROWS
    ]
    rev = write(tmp_path / f"All_Beauty{ext}", jsonl(reviews), gz)
    meta = [
        {
            "parent_asin": "i1",
            "title": "Brush",
            "description": ["Soft", "bristles"],
            "images": [{"large": "x"}],
        },
        {"parent_asin": "i2", "title": "Comb", "description": []},
    ]
    met = write(tmp_path / f"meta_All_Beauty{ext}", jsonl(meta), gz)
    assert detect_format([rev, met]) == "amazon2023"
    raw = read_raw([rev, met])
    assert triples(raw.interactions) == ROWS  # parent_asin is the item, milliseconds -> seconds
    got = titles(raw)
    assert got["i1"] == ("Brush", "Soft bristles") and got["i2"][0] == "Comb"


# ------------------------------------------------------------------------------------------------ MovieLens


def test_movielens_100k(tmp_path):
    write(tmp_path / "u.data", "".join(f"{u[1:]}\t{i[1:]}\t3\t{t}\n" for u, i, t in ROWS))
    write(
        tmp_path / "u.item",
        "1|Caf\xe9 (1995)|01-Jan-1995||http://x|0|1\n3|Heat (1995)|01-Jan-1995||http://y|1|0\n",
        encoding="latin-1",
    )
    write(tmp_path / "README", "not data")
    assert detect_format([tmp_path]) == "movielens"
    raw = read_raw([tmp_path])
    assert triples(raw.interactions) == [(u[1:], i[1:], t) for u, i, t in ROWS]
    assert titles(raw) == {"1": ("Caf\xe9 (1995)", None), "3": ("Heat (1995)", None)}


def test_movielens_1m_dat(tmp_path):
    write(tmp_path / "ratings.dat", "".join(f"{u[1:]}::{i[1:]}::3::{t}\n" for u, i, t in ROWS))
    write(tmp_path / "movies.dat", "1::Star Wars: Episode IV (1977)::Action|Sci-Fi\n", encoding="latin-1")
    raw = read_raw([tmp_path / "ratings.dat", tmp_path / "movies.dat"])
    assert triples(raw.interactions) == [(u[1:], i[1:], t) for u, i, t in ROWS]
    assert titles(raw) == {"1": ("Star Wars: Episode IV (1977)", None)}


def test_movielens_csv(tmp_path):
    write(
        tmp_path / "ratings.csv",
        "userId,movieId,rating,timestamp\n" + "".join(f"{u[1:]},{i[1:]},3.5,{t}\n" for u, i, t in ROWS),
    )
    write(tmp_path / "movies.csv", 'movieId,title,genres\n1,"American President, The (1995)",Comedy\n')
    write(tmp_path / "links.csv", "movieId,imdbId,tmdbId\n1,1,1\n")
    assert detect_format([tmp_path]) == "movielens"
    raw = read_raw([tmp_path])
    assert triples(raw.interactions) == [(u[1:], i[1:], t) for u, i, t in ROWS]
    assert titles(raw) == {"1": ("American President, The (1995)", None)}
    assert any(p.endswith("links.csv") for p in raw.ignored)


# ------------------------------------------------------------------------------------------------ release


def test_release_folder_keeps_its_blocks(tmp_path):
    folder = tmp_path / "rel"
    folder.mkdir()
    b0 = {"u1": {"previous_block": [], "current_block": ["i1", "i2", "i3"]}}
    # u2 was below the minimum in block 0: its block-0 items show only in previous_block
    b1 = {
        "u1": {"previous_block": ["i1", "i2", "i3"], "current_block": ["i4", "i1", "i2"]},
        "u2": {"previous_block": ["i4"], "current_block": ["i1", "i2", "i3"]},
    }
    (folder / "toy.all.block_0.json").write_text(json.dumps(b0))
    (folder / "toy.all.block_1.json").write_text(json.dumps(b1))
    (folder / "toy.index.x.json").write_text(json.dumps({f"i{k}": [f"<a_{k}>"] for k in range(1, 5)}))
    assert detect_format([folder]) == "release"
    raw = read_raw([folder])
    df = raw.interactions
    assert raw.name == "toy" and raw.index["i4"] == ["<a_4>"]
    assert df.filter(pl.col("user") == "u2").select("item", "block", "evaluated").rows() == [
        ("i4", 0, False),
        ("i1", 1, True),
        ("i2", 1, True),
        ("i3", 1, True),
    ]


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_layout_and_missing_input(tmp_path):
    with pytest.raises(PesoError, match="input not found"):
        detect_format([tmp_path / "nope.csv"])
    odd = write(tmp_path / "x.bin", "?")
    with pytest.raises(PesoError, match="cannot tell the input format"):
        detect_format([odd])
