"""LSAT: a long-term adapter that goes on learning, a short-term one trained afresh each block, summed."""

from __future__ import annotations

import numpy as np
import torch

from peso.model import lora_layers, merged
from peso.strategies import Block, BlockData, State, create
from peso.strategies.cumulative import lora_modules


def fake_train(log: list):
    """A stand-in training: moves every trainable LoRA B by a known step, records what was trainable."""

    def train(model, data, valid, extra_loss=None, continual=True):
        with torch.no_grad():
            for _, _, b in lora_layers(model):
                b.add_(0.01 * (len(log) + 1))
        log.append({n: a.detach().clone() for n, a, _ in lora_layers(model)})

        class Report:
            seconds, targets = 1.0, 10

        return Report()

    return train


def test_lsat_trains_long_then_short_and_serves_their_sum(tiny_lora):
    model, _, _ = tiny_lora
    m = create("lsat")
    start = {n: (a.detach().clone(), b.detach().clone()) for n, a, b in lora_layers(model)}
    log: list = []

    def fused_sum(model) -> float:  # a stand-in validation loss: a forward pass, as evaluate_loss makes
        with torch.no_grad():
            return float(model(input_ids=torch.arange(6)[None]).logits.double().sum())

    block = Block(1, BlockData(None, None, 8), None, lambda: [], fake_train(log), None, fused_sum)
    torch.manual_seed(0)
    report = m.run_block(model, block)
    # the validation loss it reports is the fused model's (both adapters in), not the short-term one's alone
    assert report.deployed_valid_loss == fused_sum(model)
    for past in m.long.values():
        past.folded = True
    assert abs(fused_sum(model) - report.deployed_valid_loss) > 1e-3
    for past in m.long.values():
        past.folded = False
    assert report.seconds == 2.0 and len(log) == 2  # two trainings, both counted
    layers = lora_modules(model)
    for n, (a0, b0) in start.items():
        past = m.long[n]
        assert torch.equal(past.A[0], a0) and torch.allclose(
            past.B[0], b0 + 0.01
        )  # long: inherited + trained
        layer = layers[n]
        short_a, short_b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        assert not torch.equal(short_a, a0) and torch.allclose(
            short_b, torch.full_like(short_b, 0.02)
        )  # fresh
    # served: W + s B_long A_long + s B_short A_short
    name, layer = next(iter(layers.items()))
    s = float(layer.scaling["default"])
    base = layer.get_base_layer().weight.detach().clone()
    want = (
        base
        + s * (m.long[name].B[0] @ m.long[name].A[0])
        + s * (layer.lora_B["default"].weight @ layer.lora_A["default"].weight)
    )
    with merged(model):
        got = layer.get_base_layer().weight.detach().clone()
    assert torch.allclose(got, want, atol=1e-6)
    # the state carries the long-term adapter: a fresh instance continues alike
    again = create("lsat")
    again.load_state(model, State(m.state(model).tensors))
    m.teardown(model)  # (one set of hooks at a time)
    assert torch.equal(again.long[name].A[0], start[name][0])
    assert np.isclose(float(again.long[name].B[0].sum()), float((start[name][1] + 0.01).sum()))
