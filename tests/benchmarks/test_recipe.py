"""benchmarks/recipe.py: every named setting is a valid set of overrides for each shipped config, and sets
what its description says (a typo in a setting would otherwise surface only after an hour-long run)."""

import csv
import sys
from pathlib import Path

import pytest

from peso.config import load_config

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import recipe  # noqa: E402


@pytest.mark.parametrize("config", ["quickstart", "cds", "beauty", "sports"])
@pytest.mark.parametrize("name", list(recipe.SETTINGS))
def test_every_setting_loads_on_every_config(config, name):
    cfg = load_config(ROOT / "configs" / f"{config}.yaml", [*recipe.COMMON, *recipe.SETTINGS[name][0]])
    assert cfg.data.blocks == [0, 1] and cfg.train.patience == 3 and cfg.threads == 1
    assert [m.name for m in cfg.methods] == ["frozen"]


def test_settings_change_what_they_name():
    base = ROOT / "configs" / "beauty.yaml"
    get = {name: load_config(base, [*recipe.COMMON, *o]) for name, (o, _) in recipe.SETTINGS.items()}
    committed = load_config(base, recipe.COMMON)
    # `h64` is the config's model as committed, whatever it holds now (configs/beauty.yaml: hidden 128)
    assert get["h64"].model == committed.model and get["h64"].data == committed.data
    assert get["h64"].model.item_init == "codebook"
    # the codebook rows off, the rest as h64
    assert get["h64-rows-random"].model.item_init == "random"
    assert get["h64-rows-random"].model.tiny == committed.model.tiny
    assert get["h64-hist50"].data.history == 50 and get["h64"].data.history == 20
    assert (get["h256"].model.tiny.hidden, get["h256"].train.epochs) == (256, 8)
    assert get["h64-lr1e-2"].train.lr == pytest.approx(1e-2)


def test_the_rules_pick_lowest_loss_or_highest_validation_ndcg():
    results = {
        "h64": {"valid_loss": 2.20, "valid_ndcg@10": 0.0420},
        "h128": {"valid_loss": 2.18, "valid_ndcg@10": 0.0413},
        "h64-hist50": {"valid_loss": 2.19, "valid_ndcg@10": 0.0416},
        "lightgcn-finetune": {"valid_loss": None},  # a reference never competes
    }
    assert recipe.choose(results, "loss") == "h128"
    assert recipe.choose(results, "ndcg") == "h64"
    assert recipe.choose({"sasrec-finetune": {"valid_loss": None}}, "loss") is None


def test_a_reference_folders_frozen_entry_reads_block0s_curve_and_a_fixed_method_has_no_best_epoch(tmp_path):
    from tests.conftest import tiny_run

    run = tiny_run(tmp_path, [{"name": "frozen", "label": "f0"}, "popular"], epochs=2)
    log = [r for r in csv.DictReader((run / "training.csv").open()) if r["method"] == "block0"]
    f0 = recipe.block0(run, "f0")  # a labelled `frozen` entry is the shared block 0, logged as "block0"
    assert f0["curve"] == [float(r["valid_loss"]) for r in log] and len(f0["curve"]) == 2
    assert f0["valid_loss"] == min(f0["curve"]) and f0["best_epoch"] in (1, 2)
    pop = recipe.block0(run, "popular")  # no training: no curve, no best epoch
    assert pop["curve"] == [] and pop["valid_loss"] is None and pop["best_epoch"] is None
