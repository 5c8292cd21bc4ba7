"""benchmarks/drift_stats.py: the Jensen-Shannon distance against a hand computation, and the per-block drift
and split-half floor of a small DATA_DIR."""

import math
import sys
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import drift_stats  # noqa: E402


def test_js_distance_by_hand():
    # p = (1/2, 1/2, 0), q = (0, 1/2, 1/2): m = (1/4, 1/2, 1/4), KL(p||m) = KL(q||m) = 1/2 bit
    assert drift_stats.js_distance(Counter(a=1, b=1), Counter(b=2, c=2)) == pytest.approx(math.sqrt(0.5))
    assert drift_stats.js_distance(Counter(a=3, b=1), Counter(a=6, b=2)) == pytest.approx(0.0)
    assert drift_stats.js_distance(Counter(a=1), Counter(b=1)) == pytest.approx(1.0)


def test_block_drift_compares_consecutive_blocks_and_two_halves_of_each(tmp_path):
    rows = [("u1", "a", 0), ("u2", "a", 0), ("u1", "b", 1), ("u2", "b", 1), ("u1", "b", 2), ("u2", "c", 2)]
    pl.DataFrame(rows, schema=["user", "item", "block"], orient="row").write_parquet(
        tmp_path / "interactions.parquet"
    )
    out = drift_stats.block_drift(tmp_path)
    assert [r["block"] for r in out] == [1, 2]
    assert out[0]["js_to_previous"] == pytest.approx(1.0)  # all a, then all b
    assert out[0]["js_halves"] == pytest.approx(0.0)  # u1 and u2 both pick b
    # (b 1/2, c 1/2) against (b 1): m = (3/4, 1/4)
    kl_p = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_q = math.log2(1 / 0.75)
    assert out[1]["js_to_previous"] == pytest.approx(math.sqrt((kl_p + kl_q) / 2))
    assert out[1]["js_halves"] == pytest.approx(1.0)  # u1: b, u2: c


@pytest.mark.parametrize(
    ("with_data", "runs", "needle"),
    [(False, False, "interactions.parquet: not found"), (True, True, "training.csv: not found")],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, with_data, runs, needle):
    if with_data:  # a valid DATA_DIR, so the run folder is what fails
        pl.DataFrame({"user": ["u"], "item": ["a"], "block": [0]}).write_parquet(
            tmp_path / "interactions.parquet"
        )
    argv = [str(tmp_path)] + (["--runs", str(tmp_path)] if runs else [])
    monkeypatch.setattr(sys, "argv", ["drift_stats.py", *argv])
    with pytest.raises(SystemExit) as e:
        drift_stats.main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
