"""benchmarks/side_by_side.py --block0: two block-0 models from different folders, paired over the same users;
the figures are the folders' own block-0 rows."""

import csv
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_run
from tests.test_cli_errors import BLOCK0, BLOCK1

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import side_by_side  # noqa: E402


def block_rows(run: Path) -> dict[tuple[str, int], dict]:
    return {(r["method"], int(r["block"])): r for r in csv.DictReader((run / "results.csv").open())}


def test_block0_pairs_two_folders_block_0_and_the_default_the_continual_mean(tmp_path, monkeypatch):
    short = tiny_run(tmp_path / "a", [{"name": "frozen", "label": "short"}], epochs=1)
    long = tiny_run(tmp_path / "b", [{"name": "frozen", "label": "long"}, "single"], epochs=4)
    out = tmp_path / "out.json"
    argv = [
        "side_by_side.py",
        "--dataset",
        "toy",
        str(short),
        str(long),
        "--refs",
        "short",
        "--json",
        str(out),
    ]
    monkeypatch.setattr(sys, "argv", [*argv, "--block0"])
    side_by_side.main()
    got = json.loads(out.read_text())["toy"]
    rows = {**block_rows(short), **block_rows(long)}
    for method in ("short", "long", "single"):
        assert got[method]["ndcg@10"][0] == pytest.approx(float(rows[(method, 0)]["ndcg@10"]), abs=1e-6)
    want = float(rows[("long", 0)]["ndcg@10"]) - float(rows[("short", 0)]["ndcg@10"])
    assert want != 0  # the two block-0 models differ, so the pairing is tested
    assert float(got["long"]["vs"]["short"].split()[0]) == pytest.approx(want, abs=1e-4)
    assert got["single"]["vs"]["short"] == got["long"]["vs"]["short"]  # single's block 0 is long's model
    monkeypatch.setattr(sys, "argv", argv)  # without --block0: the continual blocks (block 1 here)
    side_by_side.main()
    got = json.loads(out.read_text())["toy"]
    assert got["single"]["ndcg@10"][0] == pytest.approx(float(rows[("single", 1)]["ndcg@10"]), abs=1e-6)


def test_block0_takes_a_reference_that_ran_blocks_0_1_only(tmp_path, monkeypatch):
    # as the recipe study's SASRec and LightGCN folders (`data.blocks=[0,1]`) beside full LLM runs
    u1 = BLOCK1["u1"]
    three = {
        0: BLOCK0,
        1: BLOCK1,
        2: {
            "u1": {
                "previous_block": u1["previous_block"] + u1["current_block"],
                "current_block": ["i3", "i4", "i5"],
            }
        },
    }
    full = tiny_run(tmp_path / "a", [{"name": "frozen", "label": "llm"}], epochs=2, blocks=three)
    short = tiny_run(tmp_path / "b", ["popular"], blocks=three, data={"blocks": [0, 1]})
    out = tmp_path / "out.json"
    argv = ["side_by_side.py", "--dataset", "toy", str(full), str(short), "--refs", "llm", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", [*argv, "--block0"])
    side_by_side.main()
    got = json.loads(out.read_text())["toy"]
    rows = {**block_rows(full), **block_rows(short)}
    assert got["popular"]["ndcg@10"][0] == pytest.approx(float(rows[("popular", 0)]["ndcg@10"]), abs=1e-6)
    want = float(rows[("popular", 0)]["ndcg@10"]) - float(rows[("llm", 0)]["ndcg@10"])
    assert want != 0  # the two block-0 rankings differ, so the pairing is tested
    assert float(got["popular"]["vs"]["llm"].split()[0]) == pytest.approx(want, abs=1e-4)
    monkeypatch.setattr(sys, "argv", argv)  # the continual mean needs every block: the short folder drops out
    side_by_side.main()
    assert "popular" not in json.loads(out.read_text())["toy"]
