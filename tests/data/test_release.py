"""`read_release`: the real CDs release, gzipped files, and every bad input as a one-line PesoError."""

import gzip
import json
from pathlib import Path

import pytest

from peso.data.release import read_release
from peso.errors import PesoError
from peso.tokenize.items import ItemIndex

CDS = Path("/work/shared/data/peso-release/CDs_and_Vinyl_cl_0.6_0_5_3_0")

INDEX = {
    "i1": ["<a_1>", "<b_1>"],
    "i2": ["<a_1>", "<b_2>"],
    "i3": ["<a_2>", "<b_1>"],
    "i4": ["<a_2>", "<b_2>"],
}
BLOCK0 = {
    "u1": {"previous_block": [], "current_block": ["i1", "i2", "i3"]},
    "u2": {"previous_block": [], "current_block": ["i2", "i3", "i4", "i1"]},
}
BLOCK1 = {
    "u1": {"previous_block": ["i1", "i2", "i3"], "current_block": ["i4", "i1", "i2"]},
    "u3": {"current_block": ["i3", "i4", "i1"]},  # previous_block may be left out
}


def dump(path: Path, obj, gz: bool = False) -> Path:
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            json.dump(obj, f)
    else:
        path.write_text(json.dumps(obj))
    return path


def write_release(folder: Path, blocks=None, index=None, name: str = "toy", gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".json.gz" if gz else ".json"
    for t, content in (blocks if blocks is not None else {0: BLOCK0, 1: BLOCK1}).items():
        dump(folder / f"{name}.all.block_{t}{ext}", content, gz)
    if index is not False:
        dump(folder / f"{name}.index.x{ext}", index if index is not None else INDEX, gz)
    return folder


def raises_naming(path: Path | str, fn, *args, **kwargs) -> str:
    with pytest.raises(PesoError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert str(path) in msg, msg
    assert "\n" not in msg
    return msg


# --- the real release ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cds():
    if not CDS.is_dir():
        pytest.skip(f"{CDS} not available")
    return read_release(CDS)


def test_real_cds_release_counts(cds):
    assert cds.name == "CDs_and_Vinyl_cl_0.6_0_5_3_0"
    assert [b.number for b in cds.blocks] == [0, 1, 2, 3, 4]
    assert len(cds.blocks[1]) == 1013
    assert len(cds.blocks[1].users) == len(cds.blocks[1].previous) == len(cds.blocks[1].current)
    assert len(cds.index) == 39191
    assert all(len(toks) == 4 for toks in cds.index.values())
    assert Path(cds.index_source).parent == CDS
    assert Path(cds.blocks[1].source).name.endswith(".all.block_1.json")
    index = ItemIndex.from_tokens(cds.index, cds.index_source)
    assert index.collisions()["shared_ids"] == 546
    assert index.levels == 4


def test_real_cds_block0_has_no_previous_items(cds):
    assert all(len(p) == 0 for p in cds.blocks[0].previous)
    # later blocks carry earlier history for at least some users
    assert any(len(p) > 0 for p in cds.blocks[1].previous)


def test_real_cds_block_selection():
    data = read_release(CDS, blocks=[3, 1])
    assert [b.number for b in data.blocks] == [1, 3]
    assert len(data.blocks[0]) == 1013


# --- tiny hand-made releases --------------------------------------------------------------------------


def test_plain_tiny_release(tmp_path):
    data = read_release(write_release(tmp_path / "r"))
    assert data.name == "toy"
    assert [b.number for b in data.blocks] == [0, 1]
    b1 = data.blocks[1]
    assert b1.users == ["u1", "u3"]
    assert b1.previous == [["i1", "i2", "i3"], []]
    assert b1.current == [["i4", "i1", "i2"], ["i3", "i4", "i1"]]
    assert data.index == INDEX


def test_gzipped_release(tmp_path):
    folder = write_release(tmp_path / "r", gz=True)
    assert sorted(p.name for p in folder.iterdir()) == [
        "toy.all.block_0.json.gz",
        "toy.all.block_1.json.gz",
        "toy.index.x.json.gz",
    ]
    data = read_release(folder)
    plain = read_release(write_release(tmp_path / "p"))
    assert [b.number for b in data.blocks] == [0, 1]
    for g, p in zip(data.blocks, plain.blocks, strict=True):
        assert (g.users, g.previous, g.current) == (p.users, p.previous, p.current)
    assert data.index == plain.index


def test_integer_item_ids_are_read_as_strings(tmp_path):
    index = {"1": ["<a_1>", "<b_1>"], "2": ["<a_2>", "<b_1>"], "3": ["<a_1>", "<b_2>"]}
    blocks = {
        0: {"u": {"previous_block": [], "current_block": [1, 2, 3]}},
        1: {"u": {"previous_block": [1, 2, 3], "current_block": [3, 2, 1]}},
    }
    data = read_release(write_release(tmp_path / "r", blocks, index))
    assert data.blocks[1].previous == [["1", "2", "3"]]
    assert data.blocks[1].current == [["3", "2", "1"]]


def test_missing_folder(tmp_path):
    raises_naming(tmp_path / "nope", read_release, tmp_path / "nope")


def test_folder_without_block_files(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    dump(folder / "toy.index.x.json", INDEX)
    raises_naming(folder, read_release, folder)


def test_malformed_json_block(tmp_path):
    folder = write_release(tmp_path / "r")
    bad = folder / "toy.all.block_1.json"
    bad.write_text('{"u1": {"current_block": ["i1", "i2", "i3"]},\n "u2": ')
    msg = raises_naming(bad, read_release, folder)
    assert "malformed JSON" in msg
    assert "line 2" in msg


def test_malformed_json_index(tmp_path):
    folder = write_release(tmp_path / "r")
    bad = folder / "toy.index.x.json"
    bad.write_text("{not json")
    assert "malformed JSON" in raises_naming(bad, read_release, folder)


def test_truncated_gzip_block(tmp_path):
    folder = write_release(tmp_path / "r", gz=True)
    bad = folder / "toy.all.block_0.json.gz"
    bad.write_bytes(bad.read_bytes()[:20])
    raises_naming(bad, read_release, folder)


def test_missing_index_file(tmp_path):
    folder = write_release(tmp_path / "r", index=False)
    msg = raises_naming(folder, read_release, folder)
    assert "no index file" in msg


def test_two_index_files(tmp_path):
    folder = write_release(tmp_path / "r")
    dump(folder / "toy.index.y.json", INDEX)
    msg = raises_naming(folder, read_release, folder)
    assert "2 index files" in msg


def test_item_absent_from_index(tmp_path):
    blocks = {0: BLOCK0, 1: {"u1": {"previous_block": ["i1"], "current_block": ["i2", "ghost", "i3"]}}}
    folder = write_release(tmp_path / "r", blocks)
    msg = raises_naming(folder / "toy.all.block_1.json", read_release, folder)
    assert "ghost" in msg
    assert "u1" in msg
    assert "toy.index.x.json" in msg


def test_item_absent_from_index_in_previous_block(tmp_path):
    blocks = {0: BLOCK0, 1: {"u1": {"previous_block": ["ghost"], "current_block": ["i2", "i1", "i3"]}}}
    folder = write_release(tmp_path / "r", blocks)
    assert "ghost" in raises_naming(folder / "toy.all.block_1.json", read_release, folder)


def test_empty_block(tmp_path):
    folder = write_release(tmp_path / "r", {0: BLOCK0, 1: {}})
    msg = raises_naming(folder / "toy.all.block_1.json", read_release, folder)
    assert "empty" in msg


def test_block_top_level_not_an_object(tmp_path):
    folder = write_release(tmp_path / "r", {0: BLOCK0, 1: [["i1", "i2", "i3"]]})
    raises_naming(folder / "toy.all.block_1.json", read_release, folder)


def test_user_without_current_block(tmp_path):
    folder = write_release(tmp_path / "r", {0: BLOCK0, 1: {"u9": {"previous_block": ["i1"]}}})
    msg = raises_naming(folder / "toy.all.block_1.json", read_release, folder)
    assert "current_block" in msg
    assert "u9" in msg


def test_current_block_not_a_list(tmp_path):
    folder = write_release(tmp_path / "r", {0: BLOCK0, 1: {"u9": {"current_block": "i1 i2 i3"}}})
    assert "u9" in raises_naming(folder / "toy.all.block_1.json", read_release, folder)


def test_index_entries_with_differing_token_counts(tmp_path):
    index = {**INDEX, "i4": ["<a_2>", "<b_2>", "<c_1>"]}
    folder = write_release(tmp_path / "r", index=index)
    msg = raises_naming(folder / "toy.index.x.json", read_release, folder)
    assert "i4" in msg


def test_index_entry_not_a_token_list(tmp_path):
    folder = write_release(tmp_path / "r", index={**INDEX, "i4": "<a_2><b_2>"})
    assert "i4" in raises_naming(folder / "toy.index.x.json", read_release, folder)


def test_empty_index(tmp_path):
    folder = write_release(tmp_path / "r", index={})
    raises_naming(folder / "toy.index.x.json", read_release, folder)


def test_only_one_block(tmp_path):
    folder = write_release(tmp_path / "r", {0: BLOCK0})
    msg = raises_naming(folder, read_release, folder)
    assert "only block" in msg


def test_only_one_block_selected(tmp_path):
    folder = write_release(tmp_path / "r")
    raises_naming(folder, read_release, folder, blocks=[1])


def test_requested_block_that_does_not_exist(tmp_path):
    folder = write_release(tmp_path / "r")
    msg = raises_naming(folder, read_release, folder, blocks=[0, 7])
    assert "data.blocks" in msg
    assert "[7]" in msg


def test_block_files_of_two_datasets(tmp_path):
    folder = write_release(tmp_path / "r")
    dump(folder / "other.all.block_2.json", BLOCK1)
    msg = raises_naming(folder, read_release, folder)
    assert "other" in msg and "toy" in msg
