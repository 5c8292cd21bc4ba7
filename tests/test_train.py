"""A diverged training is never a result: it stops the run with one line naming where (seed, method, block,
epoch, step, value) and the fix, exit code 2, and records nothing of that unit; an --overwrite that
diverges before its first unit puts the earlier run back, byte for byte."""

from __future__ import annotations

import csv
import json
import re

import pytest
import yaml

from peso.cli import main
from tests.test_bad_input import tree
from tests.test_cli_errors import write_data

BASE = {
    "model": {"name": "tiny", "tiny": {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32}},
    # several steps per epoch and no warmup step at rate 0, so that the rate is felt at once
    "train": {"epochs": 2, "batch_size": 2, "warmup_steps": 0, "grad_clip": None},
    "decode": {"beam": 10, "top_k": 10},
    "methods": ["popular", "single"],
}


def _config(tmp_path, **train) -> str:
    data = write_data(tmp_path / "data")
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump({**BASE, "data": {"path": str(data)}, "train": {**BASE["train"], **train}})
    )
    return str(path)


def _error(capsys) -> str:
    lines = capsys.readouterr().err.splitlines()
    errors = [ln for ln in lines if ln.startswith("peso: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(lines), lines
    return errors[0]


def test_a_continual_block_that_diverges_stops_the_run_and_records_nothing_of_its_unit(tmp_path, capsys):
    # block 0 trains at a sane rate; the continual blocks at 1e30 x that: the loss goes to inf / NaN
    config = _config(tmp_path, lr=1e-3, continual_lr_scale=1e30)
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["run", "--config", config, "--out", str(out)]) == 2
    line = _error(capsys)
    assert re.search(r"seed 0 method single block 1: training diverged at epoch 1, step \d+: ", line), line
    assert re.search(r"is (nan|inf|-inf)", line) and "lower train.lr" in line, line
    progress = json.loads((out / "progress.json").read_text())
    assert progress["completed"] == ["seed_0/popular/block_0", "seed_0/popular/block_1", "seed_0/block_0"]
    assert not progress["finished"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    # block 0 is recorded once per method that shares it; nothing of single's blocks 1..
    assert {(r["method"], r["block"]) for r in rows} == {("popular", "0"), ("popular", "1"), ("single", "0")}
    log = list(csv.DictReader((out / "training.csv").open()))
    assert {r["block"] for r in log} == {"0"}
    assert all(v not in ("nan", "inf") for r in log for v in r.values())
    assert not (out / "seed_0" / "single").exists()
    text = (out / "results.md").read_text()
    assert text.splitlines()[2].startswith("- incomplete: 3 of 4 units"), text[:300]


def test_a_diverging_overwrite_puts_the_earlier_run_back_exactly(tmp_path, capsys):
    config = _config(tmp_path, lr=1e-3)
    out = tmp_path / "run"
    assert main(["run", "--config", config, "--out", str(out)]) == 0
    before = tree(tmp_path)
    diverging = _config(tmp_path / "b", lr=1e30)  # block 0 diverges: no unit of the new run completes
    capsys.readouterr()
    # popular is listed first and would complete: drop it so that the failure comes before any unit
    assert (
        main(["run", "--config", diverging, "--out", str(out), "--overwrite", "--set", "methods=[single]"])
        == 2
    )
    assert "method block0 block 0: training diverged" in _error(capsys)
    after = tree(tmp_path)
    assert {k: v for k, v in after.items() if k.split("/")[0] != "b"} == before


def test_non_finite_settings_are_refused(tmp_path, capsys):
    config = _config(tmp_path)
    for key, where in (
        ("train.lr=.inf", "train.lr"),
        ("train.lr=.nan", "train.lr"),
        ("train.temperature=.inf", "train.temperature"),
        ("methods=[{name: peso, lam: .nan}]", "(peso): 'lam'"),
    ):
        capsys.readouterr()
        assert main(["run", "--config", config, "--out", str(tmp_path / "x"), "--set", key]) == 2
        assert where in _error(capsys)
    assert not (tmp_path / "x").exists()


def test_patience_stops_a_block_and_restores_the_best_epoch(tiny_lora, monkeypatch):
    """Validation losses 3, 2, 2.5, 2.6, 1 with patience 2: epochs 3 and 4 do not improve on epoch 2, so the
    block stops after epoch 4 (epoch 5 never runs) and epoch 2's parameters come back."""
    import numpy as np
    import torch

    from peso import train as train_module
    from peso.data.samples import BlockSamples
    from peso.pack import pack

    model, space, index = tiny_lora
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, len(index.items), 8) for _ in range(6)]
    s = BlockSamples(0, [f"u{i}" for i in range(6)], seqs, np.zeros(6, dtype=int), 3)
    data, valid = pack(s, space, "train"), pack(s, space, "valid")
    losses, snapshots = iter([3.0, 2.0, 2.5, 2.6, 1.0]), []

    def scripted(model_, packed, *a, **k) -> float:
        snapshots.append({n: p.detach().clone() for n, p in model_.named_parameters() if p.requires_grad})
        return next(losses)

    monkeypatch.setattr(train_module, "evaluate_loss", scripted)
    schedule = train_module.Schedule(lr=1e-2, epochs=5, batch_size=4, warmup_steps=0, patience=2)
    report = train_module.train_block(model, data, valid, schedule, seed=0)
    assert report.epochs == 4 and report.best_epoch == 2 and report.valid_losses == [3.0, 2.0, 2.5, 2.6]
    assert report.valid_loss == 2.0  # the restored epoch's, which results.csv records
    report.deployed_valid_loss = 1.5  # a method that measured its final model again (LSAT) overrides it
    assert report.valid_loss == 1.5
    now = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.equal(now[n], v) for n, v in snapshots[1].items())  # epoch 2's, restored
    assert not all(torch.equal(now[n], v) for n, v in snapshots[3].items())
    no_patience = train_module.Schedule(lr=1e-2, epochs=5, batch_size=4, warmup_steps=0)
    losses = iter([3.0, 2.0, 2.5, 2.6, 1.0])
    assert train_module.train_block(model, data, valid, no_patience, seed=0).epochs == 5


def _run_each(tmp_path, runs: dict[str, dict]) -> dict[str, list[dict]]:
    """`peso run` of each config into tmp_path/name; each run's training.csv rows."""
    logs = {}
    for name, cfg in runs.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert main(["run", "--config", str(path), "--out", str(tmp_path / name)]) == 0
        with (tmp_path / name / "training.csv").open() as f:
            logs[name] = list(csv.DictReader(f))
    return logs


def _lists(run, method: str) -> str:
    return (run / "seed_0" / method / "block_1" / "recommendations.csv").read_text()


def test_a_method_s_own_continual_schedule_trains_as_the_run_wide_one(tmp_path):
    """`{name: peso, continual_lr_scale: 1, continual_epochs: 2}` in a run whose train section says 0.1 and 1
    epoch trains block 1 exactly as a run whose train section says 1 and 2: same epochs, losses and lists.
    `single` beside it keeps the run-wide schedule (one epoch). Several schedules thus share one block 0."""
    data = write_data(tmp_path / "data")
    base = {**BASE, "data": {"path": str(data)}, "train": {**BASE["train"], "continual_epochs": 1}}
    own = {"name": "peso", "lam": 10.0, "label": "p-own", "continual_lr_scale": 1.0, "continual_epochs": 2}
    runs = {
        "own": {**base, "methods": [own, "single"]},
        "wide": {
            **base,
            "methods": [{"name": "peso", "lam": 10.0, "label": "p-own"}],
            "train": {**base["train"], "continual_lr_scale": 1.0, "continual_epochs": 2},
        },
    }
    everything = _run_each(tmp_path, runs)
    logs = {name: [r for r in log if r["block"] == "1"] for name, log in everything.items()}
    lists = {name: _lists(tmp_path / name, "p-own") for name in runs}
    mine = [r for r in logs["own"] if r["method"] == "p-own"]
    assert len(mine) == 2 and mine == logs["wide"]  # every epoch's train CE, term and validation loss
    assert lists["own"] == lists["wide"]
    assert len([r for r in logs["own"] if r["method"] == "single"]) == 1


def test_continual_patience_is_the_continual_blocks_own_and_a_method_s_overrides_it():
    """Block 0 keeps `train.patience`; blocks 1.. take `train.continual_patience` (default: patience); a
    method's `continual_patience` replaces the run-wide one for its blocks 1.. and leaves block 0 alone."""
    from peso.settings import AdapterSettings, TrainConfig, method_train
    from peso.train import Schedule

    tc = TrainConfig(patience=3, continual_patience=1, epochs=30, continual_epochs=4, continual_lr_scale=1.0)
    assert Schedule.of(tc, continual=False).patience == 3 and Schedule.of(tc, continual=True).patience == 1
    assert Schedule.of(tc.model_copy(update={"continual_patience": None}), continual=True).patience == 3
    assert Schedule.of(TrainConfig(), continual=True).patience is None  # no patience anywhere: every epoch
    own = method_train(AdapterSettings(name="single", continual_patience=2), tc)
    assert Schedule.of(own, continual=False).patience == 3 and Schedule.of(own, continual=True).patience == 2
    assert method_train(AdapterSettings(name="single"), tc) == tc  # nothing of its own: the run-wide one


def test_a_continual_item_softmax_trains_blocks_1_under_the_trie_and_leaves_block_0_alone(tmp_path):
    """`continual_item_softmax: trie` on a method (in a run whose model.item_softmax is the vocabulary's)
    trains block 1 exactly as `train.continual_item_softmax: trie` does run-wide: same epochs, losses and
    lists. Block 0 is the vocabulary's in every run; `single` beside it keeps the vocabulary's in blocks 1..,
    and `frozen` (no continual schedule: block 0's model) is decoded as block 0 was trained, even run-wide.
    The block's validation loss is the trie's: the saved model, reloaded through PEFT, gives the logged figure
    on block 1's validation targets under the trie, and another under the vocabulary."""
    from safetensors import safe_open

    from peso.pack import pack
    from peso.settings import method_train
    from peso.train import validation_loss
    from tests.test_run_e2e import _reload

    data = write_data(tmp_path / "data")
    base = {**BASE, "data": {"path": str(data)}}
    peso = {"name": "peso", "lam": 10.0, "label": "p"}
    runs = {
        "own": {**base, "methods": [{**peso, "continual_item_softmax": "trie"}, "single", "frozen"]},
        "wide": {
            **base,
            "methods": [peso, "frozen"],
            "train": {**base["train"], "continual_item_softmax": "trie"},
        },
        "vocab": {**base, "methods": [peso, "single", "frozen"]},
    }
    logs = _run_each(tmp_path, runs)
    lists = {
        name: {
            m: _lists(tmp_path / name, m)
            for m in ("p", "single", "frozen")
            if (tmp_path / name / "seed_0" / m).is_dir()
        }
        for name in runs
    }

    def rows(name: str, method: str, block: str) -> list[dict]:
        return [r for r in logs[name] if (r["method"], r["block"]) == (method, block)]

    assert rows("own", "block0", "0") == rows("wide", "block0", "0") == rows("vocab", "block0", "0") != []
    assert rows("own", "p", "1") == rows("wide", "p", "1") != []
    assert lists["own"]["p"] == lists["wide"]["p"]
    assert rows("own", "single", "1") == rows("vocab", "single", "1") != []
    assert lists["own"]["single"] == lists["vocab"]["single"]
    assert lists["own"]["frozen"] == lists["wide"]["frozen"] == lists["vocab"]["frozen"]
    mine, theirs = rows("own", "p", "1"), rows("vocab", "p", "1")
    assert all(float(a["train_ce"]) != float(b["train_ce"]) for a, b in zip(mine, theirs, strict=True))

    cfg, prep, space, model = _reload(tmp_path / "own.yaml", tmp_path / "own", "p/block_1/adapter")
    tc = method_train(cfg.methods[0], cfg.train)
    logged = float(next((r for r in mine if r["best"] == "1"), mine[-1])["valid_loss"])
    losses = {}
    for softmax in ("trie", "vocab"):
        space.item_softmax = softmax
        valid = pack(prep.samples[1], space, "valid", trie=prep.tries[1])
        losses[softmax] = validation_loss(tc, valid)(model)
    assert losses["trie"] == pytest.approx(logged, rel=1e-5)
    assert losses["vocab"] > logged + 0.01

    def recorded(adapter: str) -> str:  # the exported rows name the softmax their block trained under
        with safe_open(tmp_path / "own" / "seed_0" / adapter / "item_rows.safetensors", "pt") as f:
            return f.metadata()["item_softmax"]

    assert recorded("p/block_1/adapter") == "trie"
    assert recorded("single/block_1/adapter") == recorded("block_0/adapter") == "vocab"
