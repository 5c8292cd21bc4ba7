"""benchmarks/continual_valid.py: every continual block decoded once (then read from the cache), its test
figures the run folder's, and the choice the highest mean validation NDCG@10."""

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

from peso.cli import main
from peso.errors import PesoError
from tests.conftest import CONFIG, tiny_run

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import continual_valid  # noqa: E402


def test_blocks_are_decoded_once_and_the_highest_validation_mean_is_chosen(runs, tmp_path, monkeypatch):
    cache, out = tmp_path / "cache", tmp_path / "out.json"
    argv = ["continual_valid.py", f"{runs / 'run4'}:peso", f"{runs / 'run4'}:peso-select", "--beam", "12"]
    monkeypatch.setattr(sys, "argv", [*argv, "--cache", str(cache), "--json", str(out)])
    continual_valid.main()
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        f"run4-{m}-b{b}.json" for m in ("peso", "peso-select") for b in (1, 2, 3)
    )
    got = json.loads(out.read_text())
    results = {(r["method"], r["block"]): r for r in csv.DictReader((runs / "run4" / "results.csv").open())}
    for row in got["rows"]:
        want = [float(results[(row["method"], str(b))]["ndcg@10"]) for b in (1, 2, 3)]
        assert row["test"] == pytest.approx(want, abs=1e-6)
        assert all(0 <= v <= 1 for v in row["valid"])
    means = {r["method"]: sum(r["valid"]) / 3 for r in got["rows"]}
    assert got["means"] == pytest.approx(means)
    assert got["chosen"] == max(means, key=means.get)
    # the paired interval's centre is the difference of the means (one seed), and it brackets it
    (other,) = set(means) - {got["chosen"]}
    iv = got["vs_chosen"][other]
    assert iv["mean"] == pytest.approx(means[other] - means[got["chosen"]], abs=1e-7)
    assert iv["low"] <= iv["mean"] <= iv["high"]
    valid = {r["method"]: r["valid"] for r in got["rows"]}
    if valid["peso"] != valid["peso-select"]:  # peso-select may pick peso's lambda in every block (this
        assert iv["low"] < iv["high"]  # machine does); then its model is peso's and the interval [0, 0]
    else:
        assert iv == {"mean": 0.0, "low": 0.0, "high": 0.0}
    for f in cache.iterdir():  # the per-user figures are the block's figure
        d = json.loads(f.read_text())["beams"]["12"]["valid"]
        assert sum(d["ndcg@10_users"]) / len(d["ndcg@10_users"]) == pytest.approx(d["ndcg@10"], abs=1e-7)

    # a second call reads the cache and decodes nothing
    def refuse(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(continual_valid, "decode_splits", refuse)
    continual_valid.main()
    assert json.loads(out.read_text()) == got

    # pairs whose validation users differ are not compared
    f = cache / "run4-peso-b2.json"
    d = json.loads(f.read_text())
    d["beams"]["12"]["valid"]["users_sha256"] = "0" * 64
    f.write_text(json.dumps(d))
    with pytest.raises(PesoError, match=r"other validation users at seed 0, block 2"):
        continual_valid.main()


def test_block0_compares_frozen_entries_on_block0_validation(tmp_path, monkeypatch):
    # two `frozen` entries of one run share block 0's model: equal figures, a difference of exactly 0
    run = tiny_run(tmp_path, [{"name": "frozen", "label": "a"}, {"name": "frozen", "label": "b"}], epochs=1)
    cache, out = tmp_path / "cache", tmp_path / "out.json"
    argv = ["continual_valid.py", f"{run}:a", f"{run}:b", "--beam", "10", "--block0"]
    monkeypatch.setattr(sys, "argv", [*argv, "--cache", str(cache), "--json", str(out)])
    continual_valid.main()
    assert sorted(p.name for p in cache.iterdir()) == ["run-a-b0.json", "run-b-b0.json"]
    got = json.loads(out.read_text())
    results = {r["method"]: r for r in csv.DictReader((run / "results.csv").open()) if r["block"] == "0"}
    for row in got["rows"]:
        assert row["test"] == pytest.approx([float(results[row["method"]]["ndcg@10"])], abs=1e-6)
    assert got["rows"][0]["valid"] == got["rows"][1]["valid"]
    (iv,) = got["vs_chosen"].values()
    assert iv == {"mean": 0.0, "low": 0.0, "high": 0.0}
    assert set(json.loads((cache / "run-a-b0.json").read_text())["beams"]["10"]) == {"valid"}


def test_methods_with_their_own_tensors_are_decoded_with_them_at_every_block(runs, tmp_path, monkeypatch):
    """SumLoRA's past adapters, LSAT's long-term adapter and peso-all's anchors live beside the PEFT adapter of
    each block's folder. A block before the last is decoded with that block's (the run keeps the last block's
    state only): every block gives the run folder's lists (beam.py's check) and figures."""
    config = tmp_path / "lsat.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "methods": ["lsat", "peso-all"]}))
    lsat = tmp_path / "lsat"
    assert main(["run", "--config", str(config), "--out", str(lsat), "--set", "data.blocks=[0,1,2]"]) == 0
    for run, method in ((runs / "run4", "sumlora-all"), (lsat, "lsat"), (lsat, "peso-all")):
        out = tmp_path / f"{method}.json"
        argv = ["continual_valid.py", f"{run}:{method}", "--beam", "10", "--cache", str(tmp_path / method)]
        monkeypatch.setattr(sys, "argv", [*argv, "--json", str(out)])
        continual_valid.main()
        (row,) = json.loads(out.read_text())["rows"]
        results = {(r["method"], r["block"]): r for r in csv.DictReader((run / "results.csv").open())}
        blocks = sorted(int(b) for m, b in results if m == method and b != "0")
        assert len(blocks) >= 2 and len(row["test"]) == len(blocks)
        want = [float(results[(method, str(b))]["ndcg@10"]) for b in blocks]
        assert row["test"] == pytest.approx(want, abs=1e-6)
