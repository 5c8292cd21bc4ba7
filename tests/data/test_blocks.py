"""Which blocks a run uses: all found, in a row, or the ones `data.blocks` lists."""

from pathlib import Path

import pytest

from peso.data.blocks import select_blocks
from peso.data.load import read_blocks
from peso.errors import PesoError
from tests.test_cli_errors import BLOCK0, BLOCK1, write_data


def test_a_gap_between_blocks_is_refused_naming_it():
    with pytest.raises(PesoError) as e:
        select_blocks([0, 1, 3, 4], None, Path("d"))
    assert "block(s) [2] missing" in str(e.value) and "data.blocks" in str(e.value)


def test_listed_blocks_may_skip_one():
    assert select_blocks([0, 1, 3, 4], [0, 1, 3], Path("d")) == [0, 1, 3]


def test_blocks_need_not_start_at_zero():  # the Instruments release: blocks 1-4
    assert select_blocks([1, 2, 3, 4], None, Path("d")) == [1, 2, 3, 4]


def test_a_release_folder_with_a_missing_block(tmp_path):
    folder = write_data(tmp_path / "gapped", {0: BLOCK0, 1: BLOCK1, 3: BLOCK1})
    with pytest.raises(PesoError) as e:
        read_blocks(folder)
    assert str(folder) in str(e.value) and "[2]" in str(e.value)
    assert [b.number for b in read_blocks(folder, [0, 1, 3]).blocks] == [0, 1, 3]
