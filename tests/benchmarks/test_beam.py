"""benchmarks/beam.py: block 0's model decoded again gives the run folder's own block-0 figures, and only a
`frozen` entry is accepted (any other method's last state is a later block's model)."""

import csv
import sys
from pathlib import Path

import pytest

from peso.errors import PesoError
from tests.conftest import tiny_run

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import beam  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("beam"), [{"name": "frozen", "label": "f0"}, "single"])


def test_the_decoded_block0_figures_are_the_run_folders(run):
    out, n = beam.decode_splits(run, method="f0", splits=("test",))
    (row,) = [
        r for r in csv.DictReader((run / "results.csv").open()) if r["method"] == "f0" and r["block"] == "0"
    ]
    assert n == int(row["users"])
    assert list(out) == ["10"]
    assert out["10"]["test"]["ndcg@10"] == pytest.approx(float(row["ndcg@10"]), abs=1e-6)
    assert out["10"]["test"]["hit@10"] == pytest.approx(float(row["hit@10"]), abs=1e-6)


@pytest.mark.parametrize("label", ["single", "frozen", "nope"])
def test_only_a_frozen_entry_is_accepted(run, label):
    with pytest.raises(PesoError, match=r"--method: .*not a `frozen` entry.*choose one of: f0"):
        beam.decode_splits(run, method=label)


def test_a_continual_block_decoded_with_the_state_after_it_gives_the_runs_figures(runs):
    out, n = beam.decode_splits(runs / "run4", method="peso", block=2, splits=("test",))
    (row,) = [
        r
        for r in csv.DictReader((runs / "run4" / "results.csv").open())
        if (r["method"], r["block"]) == ("peso", "2")
    ]
    assert n == int(row["users"])
    assert out["12"]["test"]["ndcg@10"] == pytest.approx(float(row["ndcg@10"]), abs=1e-6)
    assert out["12"]["test"]["hit@10"] == pytest.approx(float(row["hit@10"]), abs=1e-6)


@pytest.mark.parametrize("beams, users", [(None, None), ([5], 3)])
def test_a_model_the_export_cannot_rebuild_is_refused(runs, tmp_path, beams, users):
    # sumlora-all sums past adapters into its model; without block 2's past_adapters.safetensors its export
    # holds only that block's own LoRA. The check decodes the run's own first batch, so another beam or
    # fewer users do not skip it. (With the file, every block decodes: tests/benchmarks/test_continual_valid.py.)
    import shutil

    copy = tmp_path / "run4"
    shutil.copytree(runs / "run4", copy)
    (copy / "seed_0" / "sumlora-all" / "block_2" / "adapter" / "past_adapters.safetensors").unlink()
    with pytest.raises(
        PesoError, match=r"sumlora-all's model after block 2 is not the one the run evaluated"
    ):
        beam.decode_splits(copy, beams, users, method="sumlora-all", block=2, splits=("test",))


def test_the_check_compares_lists_with_the_runs(runs, tmp_path):
    # the same run folder with every saved top-10 list changed: the check must see each one it decodes
    import shutil

    copy = tmp_path / "run4"
    shutil.copytree(runs / "run4", copy)
    recs = copy / "seed_0" / "peso" / "block_2" / "recommendations.csv"
    rows = list(csv.reader(recs.open()))
    with recs.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(
            [rows[0], *([u, t, r + " 99999"] for u, t, r in rows[1:])]
        )
    with pytest.raises(PesoError, match=r"(\d+) of the first \1 test users get other top-10 lists"):
        beam.decode_splits(copy, [5], 3, method="peso", block=2, splits=("test",))
