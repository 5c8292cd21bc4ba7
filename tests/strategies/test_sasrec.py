"""SASRec: its scores against a hand computation, causality, padding, a training step, new items kept out
of training and ranking, and `sasrec-finetune` / `sasrec-retrain` through `peso run`."""

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from peso.cli import main
from peso.config import load_config
from peso.data.samples import BlockSamples
from peso.dataset import prepare
from peso.strategies import create
from peso.strategies.base import Catalogue, RunContext
from peso.strategies.sasrec import SASRec, masked_ce, windows
from tests.conftest import CDS


def toy(layers: int = 1, dropout: float = 0.0) -> SASRec:
    torch.manual_seed(0)
    model = SASRec(n_items=7, hidden=8, layers=layers, heads=2, dropout=dropout, max_len=5)
    for p in model.parameters():  # non-trivial norms and biases too
        with torch.no_grad():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def by_hand(model: SASRec, seq: list[int]) -> torch.Tensor:
    """One pre-norm block written out: x + MHA(LN(x)) with causal softmax(q k^T / sqrt(d)), then
    + W2 relu(W1 LN(.)), final LN, scores = h . E_items."""
    layer = model.encoder.layers[0]
    d, n_heads = model.hidden, model.heads
    hd = d // n_heads
    rows = torch.tensor(seq)
    n = len(seq)
    x = model.items.weight[rows] * math.sqrt(d) + model.positions.weight[-n:]

    def ln(v, norm):
        return (v - v.mean(-1, keepdim=True)) / torch.sqrt(
            v.var(-1, unbiased=False, keepdim=True) + norm.eps
        ) * (norm.weight) + norm.bias

    a = ln(x, layer.norm1)
    wq, wk, wv = layer.self_attn.in_proj_weight.split(d)
    bq, bk, bv = layer.self_attn.in_proj_bias.split(d)
    q, k, v = a @ wq.T + bq, a @ wk.T + bk, a @ wv.T + bv
    heads = []
    for h in range(n_heads):
        sl = slice(h * hd, (h + 1) * hd)
        logits = q[:, sl] @ k[:, sl].T / math.sqrt(hd)
        logits = logits.masked_fill(torch.ones(n, n).triu(1).bool(), -math.inf)  # position i reads j <= i
        heads.append(torch.softmax(logits, -1) @ v[:, sl])
    x = x + torch.cat(heads, -1) @ layer.self_attn.out_proj.weight.T + layer.self_attn.out_proj.bias
    f = ln(x, layer.norm2)
    x = (
        x
        + torch.relu(f @ layer.linear1.weight.T + layer.linear1.bias) @ layer.linear2.weight.T
        + layer.linear2.bias
    )
    h = ln(x, model.norm)
    return h @ model.items.weight[1:].T


@torch.no_grad()
def test_scores_match_hand_computation():
    model = toy()
    seq = [3, 1, 7, 2, 5]
    got = model.scores(torch.tensor([seq]))[0]
    np.testing.assert_allclose(got.numpy(), by_hand(model, seq).numpy(), rtol=1e-4, atol=1e-5)
    # the output is the final hidden state . the (shared) item embeddings; forward = the last position
    h = model.hidden_states(torch.tensor([seq]))[0]
    np.testing.assert_allclose(got.numpy(), (h @ model.items.weight[1:].T).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model(torch.tensor([seq]))[0].numpy(), got[-1].numpy(), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_attention_is_causal_and_ignores_padding():
    model = toy(layers=2)
    a = model.scores(torch.tensor([[3, 1, 7, 2, 5]]))[0]
    b = model.scores(torch.tensor([[3, 1, 7, 6, 4]]))[0]  # later items changed
    torch.testing.assert_close(a[:3], b[:3])
    assert not torch.allclose(a[3:], b[3:])
    c = model.scores(torch.tensor([[4, 1, 7, 2, 5]]))[0]  # the first item changed: every position moves
    assert not torch.allclose(a[1:], c[1:], atol=1e-4)
    # a window left-padded to max_len scores as the unpadded one (same end-aligned positions)
    padded = model(torch.tensor([[0, 0, 7, 2, 5]]))
    torch.testing.assert_close(padded, model(torch.tensor([[7, 2, 5]])))
    assert torch.isfinite(model.scores(torch.tensor([[0, 0, 0, 0, 5]]))).all()


def test_windows_are_the_protocols():
    s = BlockSamples(0, ["u"], [np.array([4, 0, 2, 6, 1, 3])], np.zeros(1, dtype=np.int64), 3)
    x = windows(s, [(0, 1), (0, 4)], 4)
    # item i is row i + 1, history 3 (not max_len 4): the window before position 4 is items 0, 2, 6
    np.testing.assert_array_equal(x.numpy(), [[0, 0, 0, 5], [0, 1, 3, 7]])


def test_training_step_lowers_the_loss():
    model = toy(layers=2, dropout=0.2).train()
    torch.manual_seed(1)
    x = torch.randint(1, 8, (16, 5))
    y = torch.randint(0, 7, (16,))
    unknown = torch.zeros(7, dtype=torch.bool)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.eval()
    before = masked_ce(model(x), y, unknown).item()
    model.train()
    opt.zero_grad()
    masked_ce(model(x), y, unknown).backward()
    opt.step()
    model.eval()
    assert masked_ce(model(x), y, unknown).item() < before - 1e-3


def test_masked_ce_is_the_softmax_over_known_items():
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.5]])
    unknown = torch.tensor([False, True, False, False])
    expected = -(1.0 - torch.logsumexp(torch.tensor([1.0, 3.0, 0.5]), 0))
    torch.testing.assert_close(masked_ce(logits, torch.tensor([0]), unknown), expected)
    assert masked_ce(logits, torch.tensor([0]), unknown) < F.cross_entropy(logits, torch.tensor([0])) + 1


def small_world(seed: int = 0):
    """20 items, items 15..19 appear only in block 1; two collisions."""
    rng = np.random.default_rng(seed)
    sid = np.arange(20)
    sid[[3, 9]] = 2  # items 2, 3, 9 share one semantic ID
    sid[17] = 16
    sid = np.unique(sid, return_inverse=True)[1]

    def block(number: int, hi: int) -> BlockSamples:
        seqs = [rng.integers(0, hi, size=int(rng.integers(5, 10))) for _ in range(12)]
        return BlockSamples(number, [f"u{i}" for i in range(12)], seqs, np.zeros(12, dtype=np.int64), 4)

    b0, b1 = block(0, 15), block(1, 20)
    known = [
        np.unique(np.concatenate(b0.sequences)),
        np.unique(np.concatenate([*b0.sequences, *b1.sequences])),
    ]
    return Catalogue(sid, 20, int(sid.max()) + 1, known), [b0, b1]


CONTEXT = RunContext(history=4)


def cfg(name: str, **sasrec) -> dict:
    settings = {"hidden": 16, "layers": 1, "heads": 2, "epochs": 3, "continual_epochs": 2, "batch_size": 8}
    return {"name": name, **settings, **sasrec}


@pytest.mark.parametrize("name", ["sasrec-finetune", "sasrec-retrain"])
def test_new_items_untrained_and_unranked_until_they_appear(name):
    cat, blocks = small_world()
    m = create(cfg(name), CONTEXT)
    m.start(0, cat)
    init = m._new_model(0).items.weight.detach().clone()  # what start + block 0 initialise
    seconds = m.fit_block(0, blocks[0])
    assert seconds > 0 and 1 <= m.best_epoch <= 3 and m.trained_targets == len(blocks[0].examples("train"))
    unseen = np.setdiff1d(np.arange(20), cat.known[0])
    assert len(unseen) > 0
    w = m.model.items.weight.detach()
    torch.testing.assert_close(w[unseen + 1], init[unseen + 1], rtol=0, atol=0)  # rows untouched
    assert not torch.equal(w[cat.known[0] + 1], init[cat.known[0] + 1])
    ranked = m.rank(0, blocks[0], 10)
    assert ranked.shape == (12, 10)
    allowed = set(cat.sid[cat.known[0]].tolist())
    assert all(set(row[row >= 0].tolist()) <= allowed for row in ranked)
    m.fit_block(1, blocks[1])
    if name == "sasrec-retrain":
        assert m.trained_targets == sum(len(b.examples("train")) for b in blocks)
    else:
        assert m.trained_targets == len(blocks[1].examples("train"))
    ranked = m.rank(1, blocks[1], 18)
    assert set(ranked[ranked >= 0].tolist()) <= set(cat.sid[cat.known[1]].tolist())
    assert set(ranked[0].tolist()) - allowed  # block 1's new items can now be ranked


def test_finetune_continues_and_retrain_restarts():
    cat, blocks = small_world()
    runs = {}
    for name in ("sasrec-finetune", "sasrec-retrain"):
        m = create(cfg(name), CONTEXT)
        m.start(0, cat)
        m.fit_block(0, blocks[0])
        after0 = {k: v.clone() for k, v in m.model.state_dict().items()}
        model0 = m.model
        m.fit_block(1, blocks[1])
        runs[name] = (after0, model0 is m.model, m.rank(1, blocks[1], 5))
    # the same seed, data and epochs: block 0 is the same model for both
    for k, v in runs["sasrec-finetune"][0].items():
        torch.testing.assert_close(v, runs["sasrec-retrain"][0][k], rtol=0, atol=0)
    assert runs["sasrec-finetune"][1] and not runs["sasrec-retrain"][1]
    # deterministic: a second start reproduces the ranking
    m = create(cfg("sasrec-finetune"), CONTEXT)
    m.start(0, cat)
    m.fit_block(0, blocks[0])
    m.fit_block(1, blocks[1])
    np.testing.assert_array_equal(m.rank(1, blocks[1], 5), runs["sasrec-finetune"][2])


def test_sasrec_through_peso_run(tmp_path):
    path = tmp_path / "cfg.yaml"
    config = {
        "data": {"path": str(CDS), "max_users": 24, "blocks": [0, 1, 2]},
        "decode": {"top_k": 10},
        "methods": [
            "popular",
            *(
                {"name": m, "hidden": 16, "layers": 1, "epochs": 2, "continual_epochs": 1, "batch_size": 32}
                for m in ("sasrec-finetune", "sasrec-retrain")
            ),
        ],
        "seeds": [0],
    }
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    assert main(["run", "--config", str(path), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {(r["method"], r["block"]) for r in rows} == {
        (m, b) for m in ("popular", "sasrec-finetune", "sasrec-retrain") for b in ("0", "1", "2")
    }
    by = {(r["method"], r["block"]): r for r in rows}
    for r in rows:
        assert int(r["users"]) == 24 and 0.0 <= float(r["ndcg@10"]) <= float(r["hit@10"]) <= 1.0
        if r["method"] == "popular":
            assert float(r["train_seconds"]) == 0.0 and r["best_epoch"] == ""
        else:
            assert (
                float(r["train_seconds"]) > 0 and int(r["best_epoch"]) >= 1 and float(r["targets_per_s"]) > 0
            )
    assert by[("sasrec-finetune", "0")]["ndcg@10"] == by[("sasrec-retrain", "0")]["ndcg@10"]
    # recommended semantic IDs belong to items known at their block
    prep = prepare(load_config(path))
    for t, s in enumerate(prep.samples):
        known = {prep.index.items[i] for i in prep.known[t]}
        for name in ("sasrec-finetune", "sasrec-retrain"):
            recs = list(
                csv.DictReader((out / "seed_0" / name / f"block_{s.number}" / "recommendations.csv").open())
            )
            assert len(recs) == 24
            groups = [g.split("|") for r in recs for g in r["recommendations"].split()]
            assert len(groups) == 24 * 10
            assert all(set(g) & known for g in groups)  # a group is listed with all its items, known or not
    assert "sasrec-retrain" in (out / "results.md").read_text()
