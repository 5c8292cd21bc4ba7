"""End to end: `peso run` on a few dozen real users, its files, and the saved adapter reloaded through PEFT."""

import csv
import hashlib
import json

import numpy as np
import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from peso.cli import main
from peso.config import load_config
from peso.dataset import prepare
from peso.decode import recommend
from peso.inputs import encode
from peso.model import load_backbone
from tests.conftest import CDS


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    cfg = {
        "data": {"path": str(CDS), "max_users": 24, "blocks": [0, 1, 2]},
        "model": {
            "name": "tiny",
            "tiny": {"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
            "lora": {"r": 4, "alpha": 8},
        },
        "train": {"epochs": 2, "continual_epochs": 1, "batch_size": 16, "lr": 3e-3},
        "decode": {"beam": 12, "top_k": 10, "batch_size": 8},
        # retrain first: the methods after it must still start from the block-0 model
        "methods": [
            "retrain",
            {"name": "peso", "lam": 100.0},
            "single",
            "frozen",
            "popular",
            {"name": "peso", "lam": 0.0, "label": "peso[lam=0]"},
            "lsat",
        ],
        "seeds": [0],
    }
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = root / "run"
    assert main(["run", "--config", str(path), "--out", str(out)]) == 0
    return path, out


def test_run_folder_has_every_output(small_run):
    _, out = small_run
    for name in ("config.yaml", "manifest.json", "results.csv", "results.md", "ndcg10.png", "training.csv"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["method"] for r in rows} == {
        "retrain",
        "peso",
        "single",
        "frozen",
        "popular",
        "peso[lam=0]",
        "lsat",
    }
    # the sweep's lambda 0 is `single`, step for step: same metrics on every block
    by = {(r["method"], r["block"]): r for r in rows}
    for b in ("1", "2"):
        assert by[("peso[lam=0]", b)]["ndcg@10"] == by[("single", b)]["ndcg@10"]
        assert by[("peso[lam=0]", b)]["hit@10"] == by[("single", b)]["hit@10"]
    assert {int(r["block"]) for r in rows} == {0, 1, 2}
    for col in ("seed", "users", "hit@1", "hit@5", "hit@10", "ndcg@5", "ndcg@10", "train_seconds"):
        assert col in rows[0]
    for r in rows:
        assert int(r["users"]) == 24
        assert 0.0 <= float(r["ndcg@10"]) <= float(r["hit@10"]) <= 1.0
    # block 0 is shared: every adapter method reports the same block-0 numbers
    b0 = {r["method"]: r["ndcg@10"] for r in rows if r["block"] == "0" and r["method"] != "popular"}
    assert len(set(b0.values())) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["collisions"]["shared_ids"] == 546 and manifest["packages"]["torch"]
    assert manifest["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    digests = manifest["data_sha256"]  # the 5 block files and the index, each its own sha256
    assert sorted(digests) == sorted(p.name for p in CDS.iterdir()) and len(digests) == 6
    index = next(p for p in CDS.iterdir() if ".index." in p.name)
    assert digests[index.name] == hashlib.sha256(index.read_bytes()).hexdigest()
    text = (out / "results.md").read_text()
    assert "semantic-ID collisions: 546" in text
    share = next(line for line in text.splitlines() if "share of the training loss" in line)
    assert "peso " in share and "single" not in share and "peso[lam=0]" not in share  # terms that exist
    assert "paired bootstrap 95% interval" in text and "| peso[lam=0] | +0.0000 [+0.0000, +0.0000] |" in text
    resolved = load_config(out / "config.yaml")
    assert resolved.data.max_users == 24 and resolved.methods[1].lam == 100.0
    log = list(csv.DictReader((out / "training.csv").open()))
    peso_b1 = [r for r in log if r["method"] == "peso" and r["block"] == "1"]
    assert peso_b1 and float(peso_b1[0]["proximal"]) > 0  # the term is logged beside the cross-entropy
    assert all(float(r["proximal"]) == 0 for r in log if r["method"] == "single")
    assert 0 < float(peso_b1[0]["proximal_share"]) < 1
    # retrain trains like block 0 (its epochs, not the continual ones) at every block
    assert {r["epoch"] for r in log if r["method"] == "retrain" and r["block"] == "2"} == {"1", "2"}
    assert {r["epoch"] for r in log if r["method"] == "single" and r["block"] == "2"} == {"1"}
    # results.csv's valid_loss is the evaluated model's: the restored epoch's for a method that trains once,
    # and for LSAT its fused model's, which neither of its two trainings measured
    best = {(r["method"], r["block"], r["pass"]): float(r["valid_loss"]) for r in log if r["best"] == "1"}
    for r in (r for r in rows if r["block"] != "0"):
        loss = float(r["valid_loss"]) if r["valid_loss"] else None
        if r["method"] in ("single", "peso", "retrain"):
            assert loss == pytest.approx(best[(r["method"], r["block"], "1")], abs=1e-6)
        elif r["method"] == "lsat":
            trainings = [best[("lsat", r["block"], p)] for p in ("1", "2")]
            assert loss is not None and all(abs(loss - v) > 1e-6 for v in trainings), (loss, trainings)
        elif r["method"] in ("frozen", "popular"):
            assert loss is None


def test_adapters_are_saved_in_peft_format_per_block(small_run):
    _, out = small_run
    seed = out / "seed_0"
    for d in (
        seed / "block_0" / "adapter",
        seed / "peso" / "block_1" / "adapter",
        seed / "single" / "block_2" / "adapter",
    ):
        assert (d / "adapter_config.json").is_file() and (d / "adapter_model.safetensors").is_file()
        rows = load_file(str(d / "item_rows.safetensors"))
        assert rows["embed_tokens"].shape == (1024, 32) and rows["token_ids"].shape == (1024,)
    assert not (seed / "frozen" / "block_1" / "adapter").exists()  # frozen never changes its adapter
    # PESO and single diverge after block 0 (the term does something), both start from block 0
    a = load_file(str(seed / "peso" / "block_1" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(seed / "single" / "block_1" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)


def test_saved_adapter_reloads_through_peft_and_recommends_the_same(small_run):
    cfg_path, out = small_run
    cfg, prep, space, model = _reload(cfg_path, out, "peso/block_1/adapter")
    samples = prep.samples[1]
    enc = encode(samples, space, "test")
    ranked = recommend(model, enc.prompts, space, prep.tries[1], cfg.decode.beam, cfg.decode.top_k, 8)
    saved = list(csv.DictReader((out / "seed_0" / "peso" / "block_1" / "recommendations.csv").open()))
    assert [r["user"] for r in saved] == samples.users
    assert _as_text(prep, ranked) == [r["recommendations"] for r in saved]
    assert np.all(ranked >= 0)


def _reload(cfg_path, out, adapter):
    """The run's config and data, and the saved base + adapter loaded back through PEFT."""
    cfg = load_config(cfg_path)
    prep = prepare(cfg)
    _, space = load_backbone(cfg.model, prep.index)
    base = AutoModelForCausalLM.from_pretrained(out / "seed_0" / "base")
    return cfg, prep, space, PeftModel.from_pretrained(base, out / "seed_0" / adapter).eval()


def _as_text(prep, ranked):
    """Ranked semantic-ID groups written as recommendations.csv writes them."""
    groups = {}
    for item, g in zip(prep.index.items, prep.index.sid.tolist(), strict=True):
        groups.setdefault(g, []).append(item)
    return [" ".join("|".join(groups[g]) for g in row if g >= 0) for row in ranked]


def test_frozen_is_the_block0_model_after_other_methods_ran(small_run):
    # frozen runs after peso and single on the same in-memory model: the block-0 state must be restored exactly
    cfg_path, out = small_run
    cfg, prep, space, model = _reload(cfg_path, out, "block_0/adapter")
    for t in (1, 2):
        enc = encode(prep.samples[t], space, "test")
        ranked = recommend(model, enc.prompts, space, prep.tries[t], cfg.decode.beam, cfg.decode.top_k, 8)
        saved = list(
            csv.DictReader((out / "seed_0" / "frozen" / f"block_{t}" / "recommendations.csv").open())
        )
        assert _as_text(prep, ranked) == [r["recommendations"] for r in saved]


def test_the_catalogue_grows_block_by_block(small_run):
    cfg_path, _ = small_run
    prep = prepare(load_config(cfg_path))
    known = [set(trie.child_val[-1].tolist()) for trie in prep.tries]
    assert known[0] < known[1] < known[2] <= set(range(prep.index.n_sids))
    for t, s in enumerate(prep.samples):  # every test target can be generated in its block
        targets = prep.index.sid[[s.target(u, s.test_position(u)) for u in range(len(s))]]
        assert set(targets.tolist()) <= known[t]
