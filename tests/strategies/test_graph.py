"""LightGCN, PISA and Contrastive+PIW: hand computations, a training step, growing rows, end to end."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from peso.cli import main
from peso.data.samples import BlockSamples
from peso.strategies import create
from peso.strategies.base import Catalogue
from peso.strategies.lightgcn import LightGCN, normalized_adjacency
from peso.strategies.pisa import Neighbours, info_nce, js_divergence, select, shift_weights
from tests.conftest import CDS

R2 = math.sqrt(2)


def test_lightgcn_matches_hand_propagation():
    # users u0, u1; items i0, i1, i2; edges u0-i0, u0-i1 (twice: one edge), u1-i1, u1-i2
    graph = normalized_adjacency(np.array([0, 0, 0, 1, 1]), np.array([0, 1, 1, 1, 2]), 2, 3)
    model = LightGCN(2, 3, 1, 1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.user.copy_(torch.tensor([[1.0], [2.0]]))
        model.item.copy_(torch.tensor([[3.0], [-1.0], [0.5]]))
    users, items = model(graph)
    # degrees u0 2, u1 2, i0 1, i1 2, i2 1; entry 1 / sqrt(d_u d_i); one layer, then the mean of layers 0, 1
    u0 = (1 + (3 / R2 + -1 / 2)) / 2
    u1 = (2 + (-1 / 2 + 0.5 / R2)) / 2
    i0 = (3 + 1 / R2) / 2
    i1 = (-1 + (1 / 2 + 2 / 2)) / 2
    i2 = (0.5 + 2 / R2) / 2
    expected = torch.tensor([[u0 * i0, u0 * i1, u0 * i2], [u1 * i0, u1 * i1, u1 * i2]])
    torch.testing.assert_close(users @ items.T, expected.float())


def test_js_shift_matches_hand_computation():
    centroids = torch.eye(2)
    current = torch.tensor([[math.log(3.0), 0.0], [1.0, 1.0]])
    previous = torch.tensor([[0.0, 0.0], [1.0, 1.0]])  # user 0 moves from (1/2, 1/2) to (3/4, 1/4)
    p, q, m = (0.5, 0.5), (0.75, 0.25), (0.625, 0.375)
    kl = lambda a: sum(a[k] * math.log(a[k] / m[k]) for k in range(2))  # noqa: E731
    js = 0.5 * (kl(p) + kl(q))
    got = js_divergence(F.softmax(previous @ centroids, 1), F.softmax(current @ centroids, 1))
    torch.testing.assert_close(got, torch.tensor([js, 0.0]), atol=1e-6, rtol=1e-5)
    weights = shift_weights(current, previous, centroids)  # sigmoid(js - mean js)
    expected = torch.tensor([1 / (1 + math.exp(-js / 2)), 1 / (1 + math.exp(js / 2))])
    torch.testing.assert_close(weights, expected)


def test_selection_keeps_most_and_least_shifted():
    w = torch.tensor([0.9, 0.1, 0.5, 0.7, 0.3])
    plastic, stable = select(w, 0.2)  # 0.8-quantile of w: 0.74; of 1 - w: 0.74
    torch.testing.assert_close(plastic, torch.tensor([0.9, 0, 0, 0, 0]))
    torch.testing.assert_close(stable, torch.tensor([0, 0.9, 0, 0, 0]))
    plastic, stable = select(w, 0.4)  # 0.6-quantiles: 0.58
    assert plastic.nonzero().flatten().tolist() == [0, 3]
    assert stable.nonzero().flatten().tolist() == [1, 4]


def test_grouped_info_nce_equals_the_pairwise_one():
    """PISA's InfoNCE repeats a user per neighbour; grouping the repeats must give the same number."""
    g = torch.Generator().manual_seed(0)
    anchor, users = torch.randn(7, 4, generator=g), torch.randn(3, 4, generator=g)
    owner, w = torch.tensor([0, 0, 1, 2, 2, 2, 1]), torch.rand(7, generator=g)
    z = F.normalize(users[owner], dim=-1)
    scores = F.normalize(anchor, dim=-1) @ z.T / 0.5
    pairwise = (-(scores.diag().exp() / scores.exp().sum(1)).log() * w).mean()
    torch.testing.assert_close(info_nce(anchor, users, owner, w, 0.5), pairwise)
    plain = (
        -(F.normalize(anchor[:3], dim=-1) @ F.normalize(users, dim=-1).T / 0.5).log_softmax(1).diag().mean()
    )
    torch.testing.assert_close(info_nce(anchor[:3], users, tau=0.5), plain)


def test_neighbours_gather():
    nb = Neighbours(np.array([2, 0, 2, 2]), np.array([5, 1, 3, 5]), 4)
    values, owner = nb.gather(np.array([2, 0]))
    assert values.tolist() == [3, 5, 1] and owner.tolist() == [0, 0, 1]
    assert nb.has(np.array([0, 1, 2, 3, 9])).tolist() == [True, False, True, False, False]


# ---- the methods on two hand-made blocks ----------------------------------------------------------------
N_ITEMS = 30


def toy_blocks() -> tuple[Catalogue, list[BlockSamples]]:
    rng = np.random.default_rng(0)
    seqs0 = [rng.choice(20, 8, replace=False) for _ in range(6)]  # block 0: items 0..19
    s0 = BlockSamples(0, list("abcdef"), seqs0, np.zeros(6, dtype=np.int64), 20)
    users1 = ["a", "b", "c", "g"]  # g is new
    seqs1, starts = [], []
    for u in users1:
        past = seqs0["abcdef".index(u)] if u in "abcdef" else np.zeros(0, dtype=np.int64)
        seqs1.append(np.concatenate([past, rng.choice(np.arange(10, 30), 6, replace=False)]))  # 20..29 new
        starts.append(len(past))
    s1 = BlockSamples(1, users1, seqs1, np.array(starts), 20)
    known = [np.unique(np.concatenate(seqs0)), np.unique(np.concatenate(seqs0 + seqs1))]
    return Catalogue(np.arange(N_ITEMS) % 25, N_ITEMS, 25, known), [s0, s1]


def config(name: str, **graph) -> dict:
    g = {"dim": 8, "epochs": 3, "continual_epochs": 2, "batch_size": 16, **graph}
    if name != "lightgcn-finetune":
        g["clusters"] = 4
    return {"name": name, **g}


@pytest.mark.parametrize("name", ["lightgcn-finetune", "pisa", "contrastive-piw"])
def test_a_training_step_lowers_the_loss(name):
    catalogue, (s0, s1) = toy_blocks()
    m = create(config(name))
    m.start(0, catalogue)
    m.fit_block(0, s0)
    users, items = m.prepare_block(1, s1)
    m.before_epoch(1)
    u, p = torch.as_tensor(users), torch.as_tensor(items)
    neg = m.negatives(1, len(u))
    emb = m.model(m.graph)
    extra = m.extra_loss(1, *emb, u, p)
    assert (extra is None) == (name == "lightgcn-finetune")  # the continual terms are part of the step
    opt = torch.optim.Adam(m.trainable(), lr=1e-2)
    before = m.loss(1, u, p, neg)
    opt.zero_grad()
    before.backward()
    opt.step()
    assert m.loss(1, u, p, neg).item() < before.item()


@pytest.mark.parametrize("name", ["lightgcn-finetune", "pisa", "contrastive-piw"])
def test_new_users_and_items_get_rows(name):
    catalogue, (s0, s1) = toy_blocks()
    m = create(config(name))
    m.start(0, catalogue)
    m.fit_block(0, s0)
    assert m.model.user.shape[0] == 6
    old_rows = m.model.user.detach().clone()
    new_items = np.setdiff1d(catalogue.known[1], catalogue.known[0])
    decayed = m.model.item.detach()[new_items].clone()  # allocated at start, untouched by block 0 but decay
    m.interactions(1, s1)
    assert m.model.user.shape[0] == 7 and m.rows["g"] == 6
    torch.testing.assert_close(m.model.user.detach()[:6], old_rows)  # old users keep their rows
    fresh = m.model.item.detach()[new_items]
    assert not torch.allclose(fresh, decayed) and 0.002 < fresh.std() < 0.05  # redrawn N(0, 0.01)
    m.start(0, catalogue)  # and a fresh seed forgets everything
    assert m.model.user.shape[0] == 0 and not m.rows


@pytest.mark.parametrize("name", ["lightgcn-finetune", "pisa", "contrastive-piw"])
def test_rank_groups_known_items_only(name):
    catalogue, (s0, s1) = toy_blocks()
    m = create(config(name))
    m.start(0, catalogue)
    for t, s in enumerate((s0, s1)):
        assert m.fit_block(t, s) > 0
        ranked = m.rank(t, s, 5)
        assert ranked.shape == (len(s), 5)
        assert np.isin(ranked, catalogue.sid[catalogue.known[t]]).all()
        assert all(len(set(r)) == 5 for r in ranked)


def test_run_end_to_end(tmp_path):
    cfg = {
        "data": {"path": str(CDS), "max_users": 24, "blocks": [0, 1, 2]},
        "decode": {"beam": 10, "top_k": 10},
        "methods": [
            {"name": m, "epochs": 2, "continual_epochs": 2, "batch_size": 64}
            for m in ("lightgcn-finetune", "pisa", "contrastive-piw")
        ],
        "seeds": [0],
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["run", "--config", str(path), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    got = {(r["method"], int(r["block"])) for r in rows}
    assert got == {(m["name"], b) for m in cfg["methods"] for b in (0, 1, 2)}
    assert all(float(r["train_seconds"]) > 0 for r in rows)


def test_lightgcn_patience_stops_and_restores_the_best_epoch(monkeypatch):
    catalogue, (s0, _) = toy_blocks()
    m = create(config("lightgcn-finetune", epochs=6, patience=2))
    m.start(0, catalogue)
    losses, states = iter([2.0, 1.5, 1.7, 1.8, 0.1, 0.1]), []

    def scripted(t):
        states.append(m.model.item.detach().clone())
        return next(losses)

    monkeypatch.setattr(m, "valid_loss", scripted)
    m.fit_block(0, s0)
    assert len(states) == 4 and m.best_epoch == 2  # epochs 3 and 4 did not improve on epoch 2: stopped
    assert torch.equal(m.model.item.detach(), states[1])
    real = create(config("lightgcn-finetune", epochs=2, patience=1))
    real.start(0, catalogue)
    real.fit_block(0, s0)
    assert np.isfinite(real.valid_loss(0)) and real.best_epoch in (1, 2)
