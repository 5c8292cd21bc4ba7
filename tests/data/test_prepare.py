"""`peso prepare`: the block cut against a hand computation, DATA_DIR round trips (BlockSet, release JSON),
`peso run`'s dispatch, every bad input as exit code 2 with nothing at --out, and the real Beauty 5-core."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from peso.cli import main
from peso.data.export import export_release
from peso.data.load import read_blocks
from peso.data.prepare import CutSettings, cut_points, kcore, prepare
from peso.data.prepared import read_prepared
from peso.data.release import read_release
from peso.errors import PesoError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
QUICKSTART = Path(__file__).resolve().parents[2] / "data" / "quickstart" / "ml-100k"

# The log in time order (position = row after sorting and dropping repeats). 25 interactions, base 0.6 -> 15,
# then 3 - 1 = 2 slices of 5. Users with < 3 items in a block (c in 0 and 1, b in 2) are not evaluated there,
# but their items still form their later history.
ORDERED = [
    ("a", "i1"),
    ("b", "i2"),
    ("d", "i3"),
    ("a", "i2"),
    ("c", "i1"),
    ("d", "i4"),
    ("b", "i3"),
    ("a", "i3"),
    ("d", "i5"),
    ("d", "i6"),
    ("c", "i6"),
    ("a", "i4"),
    ("b", "i5"),
    ("d", "i7"),
    ("d", "i8"),  # block 0
    ("a", "i5"),
    ("c", "i2"),
    ("a", "i6"),
    ("c", "i3"),
    ("a", "i7"),  # block 1
    ("c", "i4"),
    ("b", "i1"),
    ("c", "i5"),
    ("b", "i6"),
    ("c", "i7"),  # block 2
]
EXPECTED = {  # block -> [(user, previous, current)]
    0: [
        ("a", [], ["i1", "i2", "i3", "i4"]),
        ("b", [], ["i2", "i3", "i5"]),
        ("d", [], ["i3", "i4", "i5", "i6", "i7", "i8"]),
    ],
    1: [("a", ["i1", "i2", "i3", "i4"], ["i5", "i6", "i7"])],
    2: [("c", ["i1", "i6", "i2", "i3"], ["i4", "i5", "i7"])],
}
SETTINGS = ["--blocks", "3", "--base-fraction", "0.6", "--min-items", "3"]


def ts(pos: int) -> int:
    # rows 14 and 15 share a timestamp across the cut: file order must keep d,i8 in block 0
    return 100 + 10 * (pos if pos <= 14 else pos - 1)


def write_log(path: Path, gz: bool = False) -> Path:
    """The log shuffled (reversed, ties kept in order), columns in another order, plus two later repeats."""
    rows = [(u, i, ts(k)) for k, (u, i) in enumerate(ORDERED)]
    shuffled = rows[::-1]
    a, b = shuffled.index(rows[15]), shuffled.index(rows[14])
    shuffled.insert(a, shuffled.pop(b))  # the tie pair in file order: row 14 before row 15
    shuffled += [("b", "i5", 990), ("a", "i2", 995)]  # repeated pairs: the first (earlier) stays
    text = "item_id,timestamp,user_id\n" + "".join(f"{i},{t},{u}\n" for u, i, t in shuffled)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def as_lists(blocks, min_items: int = 0) -> dict[int, list[tuple[str, list[str], list[str]]]]:
    """Per block: (user, previous, current), for users with >= min_items items in the block."""
    return {
        b.number: [r for r in zip(b.users, b.previous, b.current, strict=True) if len(r[2]) >= min_items]
        for b in blocks
    }


def listing(folder: Path) -> list[str]:
    """File names, without peso's hidden marker."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def fails(capsys, tmp_path: Path, *argv: str, out: Path | None = None) -> str:
    """Exit code 2, one `peso: error:` line, nothing at --out and no temp folder left beside it."""
    out = out or tmp_path / "out"
    before = set(out.parent.iterdir()) if out.parent.exists() else set()
    code, _, err = cli(capsys, "prepare", *argv, "--out", str(out))
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("peso: error:"), err
    assert not out.exists()
    after = set(out.parent.iterdir()) if out.parent.exists() else set()
    assert after == before, after - before
    return lines[0]


# ------------------------------------------------------------------------------------------------ the cut


def test_cut_points_by_hand():
    assert cut_points(25, 0.6, 3) == [0, 15, 20, 25]
    assert cut_points(100_000, 0.6, 5) == [0, 60_000, 70_000, 80_000, 90_000, 100_000]
    # 198,502 x 0.6 = 119,101.2; the rest 79,401 in four: 19,850.25 / 39,700.5 / 59,550.75 (round half even)
    assert cut_points(198_502, 0.6, 5) == [0, 119_101, 138_951, 158_801, 178_652, 198_502]


@pytest.mark.parametrize("gz", [False, True])
def test_cut_against_hand_computation(tmp_path, capsys, gz):
    log = write_log(tmp_path / ("log.csv.gz" if gz else "log.csv"), gz)
    out = tmp_path / "toy"
    code, stdout, err = cli(capsys, "prepare", str(log), "--out", str(out), *SETTINGS)
    assert code == 0, err
    assert "block" in stdout and "peso tokenize" in stdout
    df = pl.read_parquet(out / "interactions.parquet")
    assert (
        list(df.select("user", "item").iter_rows()) == ORDERED
    )  # time order, tie in file order, repeats gone
    assert df["block"].to_list() == [0] * 15 + [1] * 5 + [2] * 5
    assert df["timestamp"].to_list() == [ts(k) for k in range(25)]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["name"] == "toy" and stats["format"] == "csv"
    assert (stats["interactions"], stats["users"], stats["items"]) == (25, 4, 8)
    assert stats["duplicates_dropped"] == 2 and stats["blocks"] == [0, 1, 2]
    got = [
        (b["interactions"], b["users"], b["evaluated_users"], b["items"], b["new_users"], b["new_items"])
        for b in stats["per_block"]
    ]
    assert got == [(15, 4, 3, 8, 4, 8), (5, 2, 1, 5, 0, 0), (5, 2, 1, 5, 0, 0)]
    assert [(b["time_start"], b["time_end"]) for b in stats["per_block"]] == [
        (100, 240),
        (240, 280),
        (290, 330),
    ]
    assert stats["per_block"][0]["interactions"] == round(0.6 * 25)
    # DATA_DIR -> BlockSet gives what the hand cut says, history carried over from unevaluated blocks
    data = read_prepared(out)
    assert as_lists(data.blocks) == EXPECTED
    assert data.index == {} and data.name == "toy"
    items = pl.read_parquet(out / "items.parquet")
    assert items.columns == ["item", "title", "description"] and items.height == 8


def test_kcore_is_iterated():
    df = pl.DataFrame(
        {"user": ["a", "a", "b", "b", "c"], "item": ["x", "y", "x", "y", "x"], "timestamp": [1, 2, 3, 4, 5]}
    )
    assert kcore(df, 2).rows() == df.head(4).rows()  # c goes; x keeps 2 users
    assert kcore(df, 3).is_empty()


def test_kcore_through_the_cli(tmp_path, capsys):
    log = write_log(tmp_path / "log.csv")
    out = tmp_path / "k"
    code, _, err = cli(
        capsys, "prepare", str(log), "--out", str(out), "--kcore", "2", "--blocks", "2", "--min-items", "3"
    )
    assert code == 0, err
    stats = json.loads((out / "stats.json").read_text())
    # i8 (1 interaction) goes; then every user and item has >= 2
    assert stats["kcore_dropped"] == 1 and stats["interactions"] == 24


# ------------------------------------------------------------------------------------------------ round trips


def test_export_release_then_read_release(tmp_path, capsys):
    log = write_log(tmp_path / "log.csv")
    out, rel = tmp_path / "toy", tmp_path / "rel"
    code, stdout, err = cli(
        capsys, "prepare", str(log), "--out", str(out), *SETTINGS, "--export-release", str(rel)
    )
    assert code == 0, err
    assert listing(rel) == [f"toy.all.block_{t}.json" for t in range(3)]  # no index yet
    (rel / "toy.index.atomic.json").write_text(json.dumps({f"i{k}": [f"<i_{k}>"] for k in range(1, 9)}))
    # the export also lists users with fewer than 3 items in a block (history only): no interaction is lost
    assert as_lists(read_release(rel).blocks, min_items=3) == EXPECTED


def test_release_in_release_out_with_index(tmp_path):
    cds = SHARED / "peso-release" / "CDs_and_Vinyl_cl_0.6_0_5_3_0"
    original = read_release(cds, blocks=[0, 1])
    src = tmp_path / "src"
    src.mkdir()
    for t in (0, 1):  # two blocks keep the test quick
        (src / f"cds.all.block_{t}.json").write_bytes((cds / f"{cds.name}.all.block_{t}.json").read_bytes())
    (src / "cds.index.json").write_text(json.dumps(original.index))
    prepare([src], tmp_path / "dd")
    assert (tmp_path / "dd" / "index.json").is_file()
    via_dir = read_blocks(tmp_path / "dd")  # what `peso run` reads
    assert as_lists(via_dir.blocks) == as_lists(original.blocks) and via_dir.index == original.index
    export_release(tmp_path / "dd", tmp_path / "again")
    back = read_release(tmp_path / "again")
    assert as_lists(back.blocks) == as_lists(original.blocks) and back.index == original.index


def test_recbole_ml100k_reproduces_the_quickstart_blocks(tmp_path):
    prep = prepare([SHARED / "ml-100k_recbole"], tmp_path / "ml")
    assert prep.stats["format"] == "recbole" and prep.stats["items_with_title"] == 1682
    assert as_lists(read_prepared(tmp_path / "ml").blocks) == as_lists(read_release(QUICKSTART).blocks)


def test_peso_run_reads_a_data_dir(tmp_path):
    from peso.config import load_config
    from peso.dataset import prepare as run_prepare

    prepare([write_log(tmp_path / "log.csv")], tmp_path / "toy", settings=CutSettings(0.6, 3, 3))
    (tmp_path / "toy" / "index.json").write_text(
        json.dumps({f"i{k}": [f"<a_{k % 3}>", f"<b_{k}>"] for k in range(1, 9)})
    )
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(f"data: {{path: {tmp_path / 'toy'}}}\nmodel: {{name: tiny}}\n")
    prep = run_prepare(load_config(str(cfg_path), []))
    assert [len(s) for s in prep.samples] == [3, 1, 1]


def test_peso_run_without_index_asks_for_tokenize(tmp_path, capsys):
    prepare([write_log(tmp_path / "log.csv")], tmp_path / "toy", settings=CutSettings(0.6, 3, 3))
    with pytest.raises(PesoError, match="peso tokenize"):
        read_blocks(tmp_path / "toy")
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(f"data: {{path: {tmp_path / 'toy'}}}\nmodel: {{name: tiny}}\n")
    code, _, err = cli(capsys, "run", "--config", str(cfg_path), "--out", str(tmp_path / "run"))
    assert code == 2 and "peso tokenize" in err and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------ bad input


def test_missing_column(tmp_path, capsys):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,rating\nu1,i1,5\n")
    msg = fails(capsys, tmp_path, str(log), "--format", "csv")
    assert str(log) in msg and "timestamp" in msg and "--time-col" in msg
    msg = fails(capsys, tmp_path, str(log), "--format", "csv", "--user-col", "who")
    assert "'who'" in msg


def test_unparsable_timestamp(tmp_path, capsys):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\nu1,i1,100\nu1,i2,yesterday\n")
    msg = fails(capsys, tmp_path, str(log))
    assert str(log) in msg and "'timestamp'" in msg and "yesterday" in msg and "row 2" in msg


def test_unparsable_timestamp_in_json(tmp_path, capsys):
    log = tmp_path / "reviews.jsonl"
    log.write_text('{"user_id": "u1", "parent_asin": "B1", "timestamp": "soon"}\n')
    msg = fails(capsys, tmp_path, str(log), "--format", "amazon2023")
    assert "'timestamp'" in msg and "soon" in msg


@pytest.mark.parametrize("content", ["", "user_id,item_id,timestamp\n"])
def test_empty_file(tmp_path, capsys, content):
    log = tmp_path / "log.csv"
    log.write_text(content)
    msg = fails(capsys, tmp_path, str(log), "--format", "csv")
    assert str(log) in msg and ("empty" in msg or "header only" in msg)


def test_empty_gzip_and_json(tmp_path, capsys):
    gz = tmp_path / "ratings.csv.gz"
    with gzip.open(gz, "wt") as f:
        f.write("")
    assert "empty" in fails(capsys, tmp_path, str(gz), "--format", "amazon2014")
    js = tmp_path / "reviews_5.json"
    js.write_text("")
    assert "empty" in fails(capsys, tmp_path, str(js), "--format", "amazon2014")


def test_block_left_empty_by_the_cut(tmp_path, capsys):
    log = write_log(tmp_path / "log.csv")
    msg = fails(capsys, tmp_path, str(log), "--blocks", "12")  # 25 rows: base 15, then 11 slices of <1
    assert "block" in msg and "empty" in msg
    msg = fails(capsys, tmp_path, str(log), "--blocks", "5")  # slices of 2-3 rows: nobody has 3 items
    assert "left without users" in msg and "--min-items" in msg


def test_bad_settings_and_existing_out(tmp_path, capsys):
    log = write_log(tmp_path / "log.csv")
    assert "--base-fraction" in fails(capsys, tmp_path, str(log), "--base-fraction", "1.5")
    assert "--blocks" in fails(capsys, tmp_path, str(log), "--blocks", "1")
    assert "--min-items" in fails(capsys, tmp_path, str(log), "--min-items", "2")
    assert "input not found" in fails(capsys, tmp_path, str(tmp_path / "nope.csv"))
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "mine.txt").write_text("x")
    code, _, err = cli(capsys, "prepare", str(log), "--out", str(keep), *SETTINGS)
    assert code == 2 and "not written by peso" in err
    code, _, err = cli(capsys, "prepare", str(log), "--out", str(keep), *SETTINGS, "--overwrite")
    assert code == 2 and "not written by peso" in err and (keep / "mine.txt").read_text() == "x"


def test_overwrite_replaces_a_data_dir(tmp_path, capsys):
    log = write_log(tmp_path / "log.csv")
    out = tmp_path / "toy"
    assert cli(capsys, "prepare", str(log), "--out", str(out), *SETTINGS)[0] == 0
    assert cli(capsys, "prepare", str(log), "--out", str(out), "--blocks", "2")[0] == 2
    assert json.loads((out / "stats.json").read_text())["blocks"] == [0, 1, 2]  # untouched
    assert cli(capsys, "prepare", str(log), "--out", str(out), "--blocks", "2", "--overwrite")[0] == 0
    assert json.loads((out / "stats.json").read_text())["blocks"] == [0, 1]


# ------------------------------------------------------------------------------------------------ real data


def test_real_amazon2014_beauty(tmp_path):
    beauty = SHARED / "amazon2014-beauty-5core"
    prep = prepare([beauty / "interactions.csv.gz", beauty / "items.csv"], tmp_path / "beauty")
    st = prep.stats
    assert st["format"] == "csv"
    assert (st["users"], st["items"], st["interactions"]) == (22_363, 12_101, 198_502)
    assert st["per_block"][0]["interactions"] == round(0.6 * 198_502)
    assert [b["interactions"] for b in st["per_block"]] == [119_101, 19_850, 19_850, 19_851, 19_850]
    assert st["items_with_title"] == 12_101 - 7  # 7 titles are empty in items.csv
    data = read_prepared(tmp_path / "beauty")
    assert [b.number for b in data.blocks] == [0, 1, 2, 3, 4]
    assert all(len(c) >= 3 for b in data.blocks for c in b.current)


def test_prepare_export_prepare_keeps_every_interaction(tmp_path):
    """MovieLens-100k (RecBole files): users with fewer than 3 items in a block are in the export too."""
    raw = SHARED / "ml-100k_recbole"
    from peso.tokenize.build import tokenize

    first = prepare([raw], tmp_path / "a")
    tokenize(tmp_path / "a", "atomic")  # a release folder carries its index
    export_release(tmp_path / "a", tmp_path / "rel")
    again = prepare([tmp_path / "rel"], tmp_path / "b")
    cols = ["user", "item", "block", "evaluated"]
    a = first.interactions.select(cols).sort(cols)
    b = again.interactions.select(cols).sort(cols)
    assert a.height == first.stats["interactions"] == again.stats["interactions"] > 90_000
    short = a.filter(~pl.col("evaluated")).height
    assert short > 0  # the case that used to be lost: history-only interactions of a block
    assert a.equals(b)
