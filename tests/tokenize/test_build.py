"""`peso tokenize` on a prepared DATA_DIR: every item gets tokens, in arrival order, IDs distinct."""

import json

import numpy as np
import polars as pl
import pytest

from peso.data.prepare import CutSettings, prepare
from peso.data.prepared import read_interactions
from peso.tokenize.build import arrival_order, tokenize
from tests.conftest import TwoTastes


@pytest.fixture
def data_dir(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    t = 0
    for step in range(600):  # items 0..39 early, 40..59 appear only later: new items in later blocks
        user = int(rng.integers(0, 40))
        pool = 40 if step < 360 else 60
        rows.append((f"u{user}", f"i{int(rng.integers(0, pool))}", 1_000_000 + t))
        t += 60
    log = tmp_path / "log.csv"
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row").write_csv(log)
    out = tmp_path / "data"
    prepare([log], out, fmt="csv")
    return out


def test_arrival_order_is_first_block_then_time(data_dir):
    df = read_interactions(data_dir)
    order = arrival_order(df)
    first = order["first_block"].to_list()
    assert first == sorted(first)
    seen, expected = set(), []
    for item in df.sort("block", maintain_order=True)["item"].to_list():
        if item not in seen:
            seen.add(item)
            expected.append(item)
    assert order["item"].to_list() == expected


def test_atomic_numbers_items_by_arrival(data_dir):
    report = tokenize(data_dir, "atomic")
    index = json.loads((data_dir / "index.json").read_text())
    order = arrival_order(read_interactions(data_dir))["item"].to_list()
    assert [index[i] for i in order] == [[f"<i_{k}>"] for k in range(len(order))]
    assert sum(report["new_items_per_block"].values()) == len(order) == report["items"]
    assert max(report["new_items_per_block"]) > 0  # later blocks bring new items


def test_collab_gives_every_item_a_distinct_id_and_reports(data_dir):
    report = tokenize(data_dir, "collab", levels=2, codes=4, dim=8)
    index = json.loads((data_dir / "index.json").read_text())
    assert len(index) == report["items"]
    assert len({tuple(v) for v in index.values()}) == len(index)  # de-duplicated
    assert all(len(v) == 3 for v in index.values())  # 2 levels + the de-duplication level
    assert 0.0 <= report["collision_rate_before_dedup"] <= 1.0
    assert len(report["codebook_usage"]) == 2
    assert (data_dir / "codebooks.safetensors").is_file() and (data_dir / "tokenizer.json").is_file()
    again = tokenize(data_dir, "collab", levels=2, codes=4, dim=8)
    assert json.loads((data_dir / "index.json").read_text()) == index  # deterministic for a seed
    assert again["collision_rate_before_dedup"] == report["collision_rate_before_dedup"]


def test_text_method_embeds_titles_with_the_packaged_minilm(tmp_path):
    rows = [(f"u{u}", f"i{(u * 3 + k) % 12}", 1000 + 100 * (u * 5 + k)) for u in range(10) for k in range(5)]
    log = tmp_path / "log.csv"
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row").write_csv(log)
    titles = [
        "red lipstick",
        "crimson lipstick",
        "blue eyeliner",
        "navy eyeliner",
        "shampoo for dry hair",
        "conditioner for dry hair",
        "sunscreen spf 50",
        "sunscreen spf 30",
        "nail polish red",
        "nail polish pink",
        "hair dryer",
        "curling iron",
    ]
    items = tmp_path / "items.csv"
    pl.DataFrame({"item_id": [f"i{k}" for k in range(12)], "title": titles}).write_csv(items)
    out = tmp_path / "data"
    prepare([log, items], out, fmt="csv")
    report = tokenize(out, "text", levels=1, codes=6)
    index = json.loads((out / "index.json").read_text())
    assert report["embedding_dim"] == 384  # all-MiniLM-L6-v2
    assert len({tuple(v) for v in index.values()}) == len(index)
    # near-synonyms share their first-level code more often than not: the codes carry meaning
    same = [index[f"i{a}"][0] == index[f"i{b}"][0] for a, b in ((0, 1), (2, 3), (6, 7), (8, 9))]
    assert sum(same) >= 3


def test_cli_tokenize_then_bad_inputs_exit_2(data_dir, tmp_path, capsys):
    from peso.cli import main

    assert (
        main(["tokenize", str(data_dir), "--method", "collab", "--levels", "2", "--codes", "4", "--dim", "8"])
        == 0
    )
    assert "collision rate before de-duplication" in capsys.readouterr().out
    for argv in (
        ["tokenize", str(tmp_path / "nowhere")],
        ["tokenize", str(data_dir), "--method", "import"],
        ["tokenize", str(data_dir), "--method", "collab", "--codes", "1"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("peso: error:")


def test_tokenized_data_dir_runs(data_dir, tmp_path):
    import yaml

    from peso.cli import main

    tokenize(data_dir, "collab", levels=2, codes=4, dim=8)
    cfg = {
        "data": {"path": str(data_dir)},
        "model": {"tiny": {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32}},
        "train": {"epochs": 1, "batch_size": 32},
        "decode": {"beam": 10},
        "methods": ["peso", "popular"],
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "results.csv").read_text().count("\n") == 1 + 2 * 5


def test_rqvae_quantizer_through_tokenize(data_dir):
    report = tokenize(data_dir, "collab", levels=2, codes=4, dim=8, quantizer="rqvae")
    index = json.loads((data_dir / "index.json").read_text())
    assert report["quantizer"] == "rqvae" and len({tuple(v) for v in index.values()}) == len(index)


def test_export_after_tokenize_round_trips_through_the_release_reader(data_dir, tmp_path):
    from peso.cli import main
    from peso.data.prepared import read_prepared
    from peso.data.release import read_release

    tokenize(data_dir, "atomic")
    assert main(["export", str(data_dir), "--out", str(tmp_path / "rel")]) == 0
    a, b = read_prepared(data_dir), read_release(tmp_path / "rel")
    assert a.index == b.index and len(a.blocks) == len(b.blocks)
    for x, y in zip(a.blocks, b.blocks, strict=True):  # the export also lists users with < 3 items (history)
        kept = [k for k, c in enumerate(y.current) if len(c) >= 3]
        assert (x.users, x.previous, x.current) == tuple(
            [v[k] for k in kept] for v in (y.users, y.previous, y.current)
        )


def test_collab_later_items_chosen_by_new_users_keep_their_neighbourhood(tmp_path):
    """Two tastes (items a*, b*) in block 0; in block 1 new users who like one taste bring new items of it.
    The new items are folded in from those users, so they land in their taste's first-level code instead of
    all sharing one code, and no block-0 item's ID changes when they arrive."""
    tastes, rows = TwoTastes(), []
    a_items, b_items, new_a, new_b = tastes.a, tastes.b, tastes.new_a, tastes.new_b
    tastes.old_users(60, 8, rows)  # block 0
    tastes.new_users(40, 7, rows)  # block 1: only new users choose the new items
    log = tmp_path / "log.csv"
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row").write_csv(log)
    data = tmp_path / "d"
    prepare(
        [log], data, fmt="csv", settings=CutSettings(base_fraction=len(rows[: 60 * 8]) / len(rows), blocks=2)
    )
    report = tokenize(data, "collab", levels=2, codes=2, dim=4)
    index = json.loads((data / "index.json").read_text())
    assert report["new_items_per_block"] == {0: 40, 1: 12}
    first = {k: v[0] for k, v in index.items()}
    assert len({first[i] for i in a_items}) == 1 and {first[i] for i in a_items} != {
        first[i] for i in b_items
    }
    assert {first[i] for i in new_a} == {first[a_items[0]]} and {first[i] for i in new_b} == {
        first[b_items[0]]
    }
    assert report["largest_prefix_share"]["later"]["share"] < 1.0
    assert report["later_items_without_training_interactions"] == 0
