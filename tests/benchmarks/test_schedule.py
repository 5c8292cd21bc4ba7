"""benchmarks/schedule.py: the grid is a valid methods list, and the choice is the lowest mean validation loss
of the restored epochs over continual blocks (a hand computation), block 0 and other epochs ignored."""

import sys
from pathlib import Path

import numpy as np
import pytest

from peso.metrics import METRICS
from peso.strategies import method_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import schedule  # noqa: E402


def test_the_grid_is_a_methods_list_with_one_schedule_per_label():
    entries = schedule.grid(["single", "{name: peso, lam: 10.0}"], [0.1, 1.0], epochs=4, patience=1)
    settings = [method_settings(e) for e in entries]
    assert [s.key for s in settings] == ["single@0.1", "single@1", "peso@0.1", "peso@1"]
    assert [s.continual_lr_scale for s in settings] == [0.1, 1.0, 0.1, 1.0]
    assert all(s.continual_epochs == 4 and s.continual_patience == 1 for s in settings)
    assert settings[3].lam == 10.0


def test_validation_loss_is_the_restored_epochs_mean_over_continual_blocks(tmp_path):
    rows = [
        # method, seed, block, epoch, valid_loss, best
        ("block0", 0, 0, 1, 1.0, 1),
        ("a@1", 0, 1, 1, 5.0, 0),
        ("a@1", 0, 1, 2, 4.0, 1),
        ("a@1", 0, 2, 1, 3.0, 1),
        ("a@1", 1, 1, 1, 6.0, 1),
        ("a@0.1", 0, 1, 1, 4.5, 1),
    ]
    lines = ["method,seed,block,epoch,train_ce,proximal,proximal_share,valid_loss,best"]
    lines += [f"{m},{s},{b},{e},0,0,0,{v},{best}" for m, s, b, e, v, best in rows]
    (tmp_path / "training.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "graph").mkdir()  # a folder of methods that log no epochs has no training.csv
    losses = schedule.validation_losses([tmp_path, tmp_path / "graph"])
    assert losses == {"a@1": pytest.approx((4.0 + 3.0 + 6.0) / 3), "a@0.1": 4.5}
    # a choice made at seed 0 stays made there when the chosen schedule alone is re-run at seed 1
    assert schedule.validation_losses([tmp_path], seeds=[0]) == {"a@1": 3.5, "a@0.1": 4.5}


def test_results_csv_valid_loss_is_the_evaluated_model_s_and_comes_first(tmp_path):
    """LSAT trains twice per block and is evaluated as the sum of both: results.csv's valid_loss (its fused
    model's) is what the rule reads; training.csv's first training stands only for rows without it."""
    lines = ["method,seed,block,pass,epoch,train_ce,proximal,proximal_share,valid_loss,best"]
    lines += ["lsat@1,0,1,1,1,0,0,0,2.0,1", "lsat@1,0,1,2,1,0,0,0,2.5,1", "lsat@1,0,2,1,1,0,0,0,3.0,1"]
    (tmp_path / "training.csv").write_text("\n".join(lines) + "\n")
    results = ["method,seed,block,users,valid_loss", "lsat@1,0,0,5,1.0", "lsat@1,0,1,5,2.25", "lsat@1,0,2,5,"]
    (tmp_path / "results.csv").write_text("\n".join(results) + "\n")
    # block 1 from results.csv (2.25, not the long-term 2.0); block 2 has none there, so training.csv's 3.0
    assert schedule.validation_losses([tmp_path]) == {"lsat@1": pytest.approx((2.25 + 3.0) / 2)}
    # the old rule, kept to reproduce earlier choices: the first training alone (LSAT's long-term 2.0)
    assert schedule.validation_losses([tmp_path], first_training=True) == {"lsat@1": pytest.approx(2.5)}


def test_methods_without_a_schedule_stand_as_they_ran_and_serve_as_references(monkeypatch):
    # a@0.1 has the lower validation loss, so it is a's choice although a@1 tests better; pisa (another folder,
    # no schedule of its own) is kept as it ran and is a reference like any chosen method
    users = {0: 4, 1: 3, 2: 5}
    rng = np.random.default_rng(0)
    per_user = {(m, 0, b): rng.random(n) for m in ("a@0.1", "a@1", "pisa") for b, n in users.items()}
    per_user.update({("a@1", 0, b): 1.0 + per_user[("a@1", 0, b)] for b in users})  # a@1 tests better
    rows = [
        {"method": m, "seed": s, "block": b, **{k: float(v.mean()) for k in METRICS}}
        for (m, s, b), v in per_user.items()
    ]
    monkeypatch.setattr(schedule, "combine", lambda runs: (rows, per_user, {}))
    monkeypatch.setattr(schedule, "families", lambda runs: {"a": {"a@0.1": {}, "a@1": {}}})
    monkeypatch.setattr(schedule, "validation_losses", lambda runs, seeds, first: {"a@0.1": 2.0, "a@1": 3.0})
    out = schedule.choose([Path("x")], ["pisa"])
    assert out["a"]["chosen"] == "a@0.1" and out["pisa"]["chosen"] == "pisa"
    assert out["a"]["test_ndcg@10_of_each"]["a@1"] > out["a"]["test_ndcg@10_of_each"]["a@0.1"]
    assert out["pisa"]["schedule"] is None and out["pisa"]["valid_loss"] == {}
    by_hand = np.mean([(per_user[("a@0.1", 0, b)] - per_user[("pisa", 0, b)]).mean() for b in (1, 2)])
    assert out["a"]["vs"]["pisa"].startswith(f"{by_hand:+.4f} [")
    assert "pisa" not in out["pisa"]["vs"]
    assert "| pisa | pisa | (none) | 1 |" in schedule.table(out, ["pisa"])


def test_a_folder_that_is_not_a_run_gets_exit_2_and_nothing_written(tmp_path, monkeypatch, capsys):
    out = tmp_path / "schedule.json"
    monkeypatch.setattr(sys, "argv", ["schedule.py", "choose", str(tmp_path / "nope"), "--json", str(out)])
    assert schedule.main() == 2
    assert "no config.yaml" in capsys.readouterr().err and not out.exists()


def test_schedules_under_different_item_softmaxes_are_not_chosen_between(tmp_path, monkeypatch):
    # a loss normalised over the trie is lower by construction: comparing it with the vocabulary's is no choice
    import yaml

    from peso.errors import PesoError

    methods = [
        {"name": "single", "label": "single@1", "continual_lr_scale": 1.0},
        {
            "name": "single",
            "label": "single@1-trie",
            "continual_lr_scale": 1.0,
            "continual_item_softmax": "trie",
        },
    ]
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump({"data": {"path": str(tmp_path)}, "methods": methods})
    )
    fams = schedule.families([tmp_path])
    assert {k: v["item_softmax"] for k, v in fams["single"].items()} == {
        "single@1": "vocab",
        "single@1-trie": "trie",
    }
    monkeypatch.setattr(schedule, "combine", lambda runs: ([], {}, {}))
    monkeypatch.setattr(
        schedule, "validation_losses", lambda runs, seeds, first: {"single@1": 2.0, "single@1-trie": 1.0}
    )
    with pytest.raises(PesoError, match="single's schedules ran under item softmaxes"):
        schedule.choose([tmp_path], [])
