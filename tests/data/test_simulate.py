"""`peso simulate`: a DATA_DIR in `peso prepare`'s format that `peso run` reads, seeded, and with the dynamics its
flags ask for (sharp shifts, new items, long-term vs drifting taste, sequential pull); bad flags exit 2."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from peso.cli import main
from peso.data.load import read_blocks
from peso.data.prepare import INTERACTIONS, ITEMS, STATS
from peso.data.prepared import read_prepared
from peso.data.simulate import SimParams, World, generate, simulate

SMALL = dict(users=200, items=200, clusters=10, blocks=4)  # ~0.2 s per world
SMALL_FLAGS = ["--users", "200", "--items", "200", "--clusters", "10", "--blocks", "4"]


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def histogram_similarity(w: World, clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user and block boundary: cosine of the user's genre histograms before/after, and the shift flag."""
    df = w.interactions.join(w.truth_items.select("item", "cluster"), on="item")
    users = w.truth_users.filter(pl.col("block") == 0)["user"].to_list()
    uid = {u: k for k, u in enumerate(users)}
    blocks = int(w.truth_users["block"].max()) + 1
    h = np.zeros((len(users), blocks, clusters))
    rows = np.array([uid[u] for u in df["user"].to_list()])
    np.add.at(h, (rows, df["block"].to_numpy(), df["cluster"].to_numpy()), 1)
    h /= np.linalg.norm(h, axis=2, keepdims=True).clip(min=1e-12)
    sim = (h[:, 1:] * h[:, :-1]).sum(axis=2)
    shifted = w.truth_users.sort("block", "user")["shifted"].to_numpy().reshape(blocks, len(users)).T[:, 1:]
    return sim, shifted


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "simulated"
    code = main(["simulate", "--out", str(out), *SMALL_FLAGS, "--seed", "3"])
    assert code == 0
    return out


# ------------------------------------------------------------------------------------------------ the format


def test_prepare_schema_and_the_run_reader(data_dir, tmp_path):
    df = pl.read_parquet(data_dir / INTERACTIONS)
    assert df.schema == pl.Schema(
        {
            "user": pl.String,
            "item": pl.String,
            "timestamp": pl.Int64,
            "block": pl.Int32,
            "evaluated": pl.Boolean,
        }
    )
    assert df["timestamp"].is_sorted() and df["block"].is_sorted()  # time order, blocks in time
    assert df.select("user", "item").is_unique().all()  # no repeated pair, as after prepare's dedupe
    per = df.group_by("user", "block").agg(
        pl.len(), pl.col("evaluated").all().alias("all"), pl.col("evaluated").any()
    )
    assert (per["evaluated"] == (per["len"] >= 3)).all() and (per["evaluated"] == per["all"]).all()
    items = pl.read_parquet(data_dir / ITEMS)
    assert items.columns == ["item", "title", "description"]
    assert set(items["item"]) == set(df["item"]) and items.height == df["item"].n_unique()

    stats = json.loads((data_dir / STATS).read_text())
    assert stats["format"] == "simulated" and stats["blocks"] == [0, 1, 2, 3]
    assert (stats["interactions"], stats["users"]) == (df.height, 200) and stats["index"] is True
    assert [b["interactions"] for b in stats["per_block"]] == df.group_by("block").len().sort("block")[
        "len"
    ].to_list()
    sim = stats["simulation"]  # the generator's parameters, to trace a run back
    assert sim["users"] == 200 and sim["seed"] == 3 and sim["clusters"] == 10 and sim["past_weight"] == 0.5

    # what `peso run` reads: the DATA_DIR reader, with the index `peso tokenize --method atomic` wrote
    data = read_blocks(data_dir)
    assert [b.number for b in data.blocks] == [0, 1, 2, 3]
    assert set(data.index) == set(df["item"]) and all(len(t) == 1 for t in data.index.values())
    assert all(len(c) >= 3 for b in data.blocks for c in b.current)
    assert all(p for b in data.blocks[1:] for p in b.previous)  # every user is there from block 0
    from peso.config import load_config
    from peso.dataset import prepare as run_prepare

    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"data: {{path: {data_dir}}}\nmodel: {{name: tiny}}\n")
    prep = run_prepare(load_config(str(cfg), []))
    assert [len(s) for s in prep.samples] == [len(b) for b in data.blocks]
    from peso.runner import manifest

    # a run on simulated data records the generator's parameters beside its results
    assert manifest(load_config(str(cfg), []), prep, [])["simulation"] == stats["simulation"]


def test_latent_index_and_no_index(tmp_path):
    simulate(tmp_path / "lat", SimParams(**SMALL, tokens="latent"))
    data = read_blocks(tmp_path / "lat")
    truth = pl.read_parquet(tmp_path / "lat" / "truth_items.parquet")
    genre = dict(zip(truth["item"], truth["cluster"], strict=True))
    assert all(toks[0] == f"<a_{genre[i]}>" and len(toks) == 2 for i, toks in data.index.items())
    assert len({tuple(t) for t in data.index.values()}) == len(data.index)  # every item its own ID
    st = simulate(tmp_path / "raw", SimParams(**SMALL, tokens="none"))
    assert st["index"] is False and not (tmp_path / "raw" / "index.json").exists()
    assert [b.number for b in read_prepared(tmp_path / "raw").blocks] == [0, 1, 2, 3]


def test_seeded(tmp_path):
    for name, seed, tokens in (("a", 1, "atomic"), ("b", 1, "atomic"), ("c", 2, "none")):
        simulate(tmp_path / name, SimParams(**SMALL, seed=seed, tokens=tokens), name="sim")  # same name
    files = sorted(
        p.name for p in (tmp_path / "a").iterdir() if p.name != "tokenizer.json"
    )  # it logs seconds
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir() if p.name != "tokenizer.json")
    for f in files:
        same = (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
        assert same, f
    a, c = (pl.read_parquet(tmp_path / d / INTERACTIONS) for d in "ac")
    assert not a.equals(c)
    assert a.select("user", "item").rows()[:50] != c.select("user", "item").rows()[:50]


# ------------------------------------------------------------------------------------------------ the dynamics


def test_shift_share_is_honoured():
    w = generate(SimParams(**SMALL, shift_share=0.25, past_weight=1.0))
    sim, shifted = histogram_similarity(w, 10)
    assert shifted.sum(axis=0).tolist() == [50, 50, 50]  # round(0.25 * 200) fresh users at every boundary
    a, b = sim[shifted], sim[~shifted]
    assert a.mean() < b.mean() - 0.3, (a.mean(), b.mean())
    assert (a[:, None] < b[None, :]).mean() > 0.8  # a shifted user is told apart from a stable one (AUC)
    assert not generate(SimParams(**SMALL, shift_share=0.0)).truth_users["shifted"].any()


def test_new_items_arrive_in_later_blocks():
    w = generate(SimParams(**SMALL, new_items_per_block=0.1))
    arrival = w.truth_items.group_by("arrival_block").len().sort("arrival_block")
    assert arrival.rows() == [(0, 200), (1, 20), (2, 20), (3, 20)]
    first = w.interactions.group_by("item").agg(pl.col("block").min().alias("first"))
    both = first.join(w.truth_items, on="item")
    assert (both["first"] >= both["arrival_block"]).all()  # never before its arrival
    for t in (1, 2, 3):  # and used in the block it arrives
        assert both.filter((pl.col("arrival_block") == t) & (pl.col("first") == t)).height >= 5
    none = generate(SimParams(**SMALL, new_items_per_block=0.0))
    assert none.truth_items["arrival_block"].max() == 0


def test_past_weight_makes_the_next_block_predictable():
    stable = generate(SimParams(**SMALL, shift_share=0.0, past_weight=1.0, drift=0.3))
    drifting = generate(SimParams(**SMALL, shift_share=0.0, past_weight=0.0, drift=0.3))
    s1, s0 = histogram_similarity(stable, 10)[0].mean(), histogram_similarity(drifting, 10)[0].mean()
    assert s1 > s0 + 0.1, (s1, s0)


def test_sequential_pull():
    def same_genre_next(w: World) -> float:
        df = w.interactions.join(w.truth_items.select("item", "cluster"), on="item", maintain_order="left")
        df = df.with_columns(pl.col("cluster").shift(1).over("user").alias("prev"))
        return float((df["cluster"] == df["prev"]).drop_nulls().mean())

    flat = same_genre_next(generate(SimParams(**SMALL, sequential=0.0)))
    pulled = same_genre_next(generate(SimParams(**SMALL, sequential=3.0)))
    assert pulled > flat + 0.15, (pulled, flat)


# ------------------------------------------------------------------------------------ item-side dynamics


def digest(df: pl.DataFrame) -> str:
    """A short hash of a frame's values (numbers as raw bytes, strings joined), independent of file formats."""
    h = hashlib.sha256()
    for name in df.columns:
        col = df[name]
        h.update(name.encode())
        if col.dtype.is_numeric() or col.dtype == pl.Boolean:
            h.update(np.ascontiguousarray(col.to_numpy()).tobytes())
        else:
            h.update("\n".join(col.to_list()).encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize(
    "params, expected",
    [
        (SMALL, ["cabe20f3bdc50c2c", "7cf4ddb4c28fcbf5", "f3cea1b23bc7acf6"]),
        (
            dict(SMALL, seed=5, shift_share=0.3, new_items_per_block=0.1, past_weight=0.2, drift=0.6),
            ["9af76bac2a56981b", "9ca3dc7c17527938", "77c7191b1683742d"],
        ),
    ],
)
def test_old_parameters_give_the_old_world(params, expected):
    """The item-side flags at their defaults draw nothing: interactions and truth equal, value for value, what
    the generator wrote before they existed (hashes from the generator at commit 4615e7c), so the sim-stable
    and sim-shifting results stay reproducible."""
    w = generate(SimParams(**params))
    assert [digest(w.interactions), digest(w.truth_items), digest(w.truth_users)] == expected
    assert w.truth_trends.height == 0


def hot_and_fresh(w: World) -> pl.DataFrame:
    """Per block: the share of picks on that block's hot items and on the items arriving in that block."""
    hot = w.truth_trends.with_columns(pl.lit(True).alias("hot"))
    df = w.interactions.join(w.truth_items.select("item", "arrival_block"), on="item")
    df = df.join(hot, on=["block", "item"], how="left").with_columns(pl.col("hot").fill_null(False))
    fresh = (pl.col("arrival_block") == pl.col("block")).mean().alias("fresh")
    return df.group_by("block").agg(pl.col("hot").mean(), fresh).sort("block")


def test_trend_share_is_honoured():
    """A trend pick lands on the hot set by construction, a taste pick by chance (hot set = 20 of >= 200
    items, ~10%): the measured share is trend_share plus (1 - trend_share) x that chance, in every block.
    (20 hot items: enough that hardly a user exhausts them in block 0's ~18 picks and falls back to taste.)"""
    for share in (0.2, 0.6):
        w = generate(SimParams(**SMALL, trend_share=share, trend_items=20))
        sizes = w.truth_trends.group_by("block").len().sort("block")
        assert sizes.rows() == [(0, 20), (1, 20), (2, 20), (3, 20)]
        measured = hot_and_fresh(w)["hot"].to_numpy()
        high = share + (1 - share) * 0.1 + 0.05
        assert np.all(measured > share - 0.04) and np.all(measured < high), (share, measured)
    off = hot_and_fresh(generate(SimParams(**SMALL, trend_share=0.0)))
    assert off["hot"].sum() == 0  # no hot set at all


def test_trend_persistence():
    """0: each block draws a new hot set (overlap by chance only); 1: the same set every block."""

    def overlaps(persistence: float) -> list[float]:
        w = generate(SimParams(**SMALL, trend_share=0.3, trend_items=20, trend_persistence=persistence))
        sets = [set(g["item"]) for _, g in w.truth_trends.group_by("block", maintain_order=True)]
        return [len(a & b) / 20 for a, b in zip(sets, sets[1:], strict=False)]

    assert max(overlaps(0.0)) <= 0.3  # 20 of ~200 items: 10% expected by chance
    assert overlaps(1.0) == [1.0, 1.0, 1.0]
    assert 0.2 < np.mean(overlaps(0.5)) < 0.8


def test_new_items_take_their_share():
    """A fresh pick goes to an item arriving in this block: in every later block their share is at least
    new_item_share and at most that plus (1 - new_item_share) x what taste alone gives them."""
    base = dict(SMALL, new_items_per_block=0.1)
    alone = hot_and_fresh(generate(SimParams(**base)))["fresh"].to_numpy()[1:]
    assert alone.max() < 0.25  # unseen by everyone, new items are a little over-picked by taste alone
    w = generate(SimParams(**base, new_item_share=0.4))
    fresh = hot_and_fresh(w)["fresh"].to_numpy()[1:]
    assert np.all(fresh > 0.4 - 0.04) and np.all(fresh < 0.4 + 0.6 * alone.max() + 0.05), (fresh, alone)
    # fresh picks follow taste: a user's fresh items lie in genres the user favours, so the genre
    # histograms of a user's fresh and other picks agree more than those of two random users
    df = w.interactions.join(w.truth_items, on="item").filter(pl.col("block") > 0)
    df = df.with_columns((pl.col("arrival_block") == pl.col("block")).alias("is_fresh"))
    h = (
        df.group_by("user", "is_fresh", "cluster")
        .len()
        .pivot("cluster", index=["user", "is_fresh"])
        .fill_null(0)
    )
    f = h.filter(pl.col("is_fresh")).sort("user")
    o = h.filter(~pl.col("is_fresh")).join(f.select("user"), on="user").sort("user")
    f = f.join(o.select("user"), on="user").sort("user")
    cols = sorted(set(f.columns) & set(o.columns) - {"user", "is_fresh"})
    a, b = f.select(cols).to_numpy().astype(float), o.select(cols).to_numpy().astype(float)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    same = (a * b).sum(1).mean()
    other = (a * np.roll(b, 1, axis=0)).sum(1).mean()
    assert same > other + 0.2, (same, other)


def test_item_side_dynamics_are_seeded_and_written(tmp_path):
    params = dict(SMALL, trend_share=0.4, trend_items=15, trend_persistence=0.3, new_item_share=0.2)
    a, b = generate(SimParams(**params, seed=7)), generate(SimParams(**params, seed=7))
    assert a.interactions.equals(b.interactions) and a.truth_trends.equals(b.truth_trends)
    c = generate(SimParams(**params, seed=8))
    assert not a.truth_trends.equals(c.truth_trends) and not a.interactions.equals(c.interactions)

    out = tmp_path / "world"
    flags = ["--trend-share", "0.4", "--trend-items", "15", "--trend-persistence", "0.3"]
    assert (
        main(["simulate", "--out", str(out), *SMALL_FLAGS, *flags, "--new-item-share", "0.2", "--seed", "7"])
        == 0
    )
    assert pl.read_parquet(out / "truth_trends.parquet").equals(a.truth_trends)
    assert pl.read_parquet(out / INTERACTIONS).equals(a.interactions)
    sim = json.loads((out / STATS).read_text())["simulation"]  # recorded in the run's manifest
    assert (sim["trend_share"], sim["trend_items"], sim["trend_persistence"], sim["new_item_share"]) == (
        0.4,
        15,
        0.3,
        0.2,
    )
    simulate(tmp_path / "plain", SimParams(**SMALL))
    assert not (tmp_path / "plain" / "truth_trends.parquet").exists()  # the old set of files


def test_shares_that_exceed_one_exit_2(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = cli(
        capsys, "simulate", "--out", str(out), *SMALL_FLAGS, "--trend-share", "0.7", "--new-item-share", "0.4"
    )
    assert code == 2 and err.startswith("peso: error: --new-item-share:") and "fix:" in err, err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--users", "-5"),
        ("--items", "0"),
        ("--clusters", "-1"),
        ("--blocks", "1"),
        ("--new-items-per-block", "-0.1"),
        ("--interactions-per-block", "0"),
        ("--shift-share", "1.5"),
        ("--past-weight", "-0.2"),
        ("--drift", "nan"),
        ("--temperature", "0"),
        ("--seed", "-1"),
        ("--trend-share", "1.5"),
        ("--trend-items", "0"),
        ("--trend-persistence", "nan"),
        ("--new-item-share", "-0.1"),
    ],
)
def test_bad_flags_exit_2_and_write_nothing(tmp_path, capsys, flag, value):
    out = tmp_path / "out"
    code, _, err = cli(capsys, "simulate", "--out", str(out), *SMALL_FLAGS, flag, value)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"peso: error: {flag}:") and "fix:" in lines[0], err
    assert list(tmp_path.iterdir()) == []  # neither --out nor a temp folder


def test_too_few_interactions_for_a_block(tmp_path, capsys):
    code, _, err = cli(
        capsys, "simulate", "--out", str(tmp_path / "out"), *SMALL_FLAGS, "--interactions-per-block", "0.05"
    )
    assert code == 2 and "--interactions-per-block" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_existing_out(tmp_path, capsys):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "mine.txt").write_text("x")
    code, _, err = cli(capsys, "simulate", "--out", str(keep), *SMALL_FLAGS)
    assert code == 2 and "--out" in err and "not written by peso" in err
    code, _, err = cli(capsys, "simulate", "--out", str(keep), *SMALL_FLAGS, "--overwrite")
    assert code == 2 and "not written by peso" in err
    assert [p.name for p in tmp_path.iterdir()] == ["keep"] and (keep / "mine.txt").read_text() == "x"
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is no one's data: it is filled
    assert cli(capsys, "simulate", "--out", str(empty), *SMALL_FLAGS, "--tokens", "none")[0] == 0
    assert (empty / STATS).is_file()
    code, _, err = cli(capsys, "simulate", "--out", str(empty), *SMALL_FLAGS, "--blocks", "3", "--overwrite")
    assert code == 0, err  # a DATA_DIR is replaced on request
    assert json.loads((empty / STATS).read_text())["blocks"] == [0, 1, 2]
