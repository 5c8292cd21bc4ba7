import math

import numpy as np
import pytest
import torch

from peso.config import RunConfig
from peso.errors import PesoError
from peso.model import lora_layers
from peso.strategies import create
from peso.strategies.peso import proximal_term, softmax_kl


def _cfg(lam: float) -> dict:
    return {"name": "peso", "lam": lam}


def _np_kl(cur: np.ndarray, prev: np.ndarray) -> float:
    p = np.exp(cur.ravel() - cur.max()) / np.exp(cur.ravel() - cur.max()).sum()
    q = np.exp(prev.ravel() - prev.max()) / np.exp(prev.ravel() - prev.max()).sum()
    return float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True)))


def test_softmax_kl_matches_hand_computation():
    cur = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]])
    prev = torch.tensor([[0.1, -0.5, 1.0], [0.2, 0.0, 0.4]])
    # one softmax over all six entries of the flattened matrix, KL(current || previous)
    expected = _np_kl(cur.numpy(), prev.numpy())
    got = softmax_kl(cur, torch.log_softmax(prev.reshape(-1), 0)).item()
    assert got == pytest.approx(expected, rel=1e-6)
    # direction matters: KL is not symmetric here
    assert _np_kl(prev.numpy(), cur.numpy()) != pytest.approx(expected, rel=1e-3)


def test_term_is_mean_over_modules_of_kl_a_plus_kl_b(tiny_lora):
    model, _, _ = tiny_lora
    strat = create(_cfg(3.0))
    strat.setup_block(model, 1, None)
    anchors = {n: (a.detach().clone(), b.detach().clone()) for n, a, b in lora_layers(model)}
    with torch.no_grad():
        for _, a, b in lora_layers(model):
            a.add_(0.3 * torch.randn_like(a))
            b.add_(0.3 * torch.randn_like(b))
    by_hand = np.mean(
        [
            _np_kl(a.detach().numpy(), anchors[n][0].numpy())
            + _np_kl(b.detach().numpy(), anchors[n][1].numpy())
            for n, a, b in lora_layers(model)
        ]
    )
    assert len(lora_layers(model)) == 2 * 7  # q,k,v,o,gate,up,down in each of 2 layers
    assert strat.extra_loss(model, None).item() == pytest.approx(3.0 * by_hand, rel=1e-5)


def test_term_is_exactly_zero_at_block_start(tiny_lora):
    model, _, _ = tiny_lora
    strat = create(_cfg(5.0))
    strat.setup_block(model, 1, None)
    assert strat.extra_loss(model, None).item() == 0.0


def test_no_anchor_no_term_and_lambda_zero_is_single(tiny_lora):
    model, _, _ = tiny_lora
    assert create(_cfg(5.0)).extra_loss(model, None) is None  # block 0: nothing to anchor to
    zero = create(_cfg(0.0))
    zero.setup_block(model, 1, None)
    assert zero.extra_loss(model, None) is None  # so training is exactly `single`'s


def test_gradient_pulls_toward_the_anchor(tiny_lora):
    model, _, _ = tiny_lora
    strat = create(_cfg(1.0))
    strat.setup_block(model, 1, None)
    anchors = {n: (a.detach().clone(), b.detach().clone()) for n, a, b in lora_layers(model)}
    with torch.no_grad():
        for _, a, b in lora_layers(model):
            a.add_(0.5 * torch.randn_like(a))
            b.add_(0.5 * torch.randn_like(b))

    def centred_distance() -> float:
        # the softmax is blind to a constant shift, so measure the drift with the mean removed
        total = 0.0
        for n, a, b in lora_layers(model):
            for cur, ref in ((a, anchors[n][0]), (b, anchors[n][1])):
                d = (cur.detach() - ref).reshape(-1)
                total += float(((d - d.mean()) ** 2).sum())
        return total

    before, term_before = centred_distance(), strat.extra_loss(model, None).item()
    params = [p for _, a, b in lora_layers(model) for p in (a, b)]
    strat.extra_loss(model, None).backward()
    for n, a, b in lora_layers(model):  # descent direction -grad has a positive component toward the anchor
        for cur, ref in ((a, anchors[n][0]), (b, anchors[n][1])):
            assert float((-cur.grad * (ref - cur.detach())).sum()) > 0
    # entries get gradients of order p = 1/N, divided by the module count: a step size of that order back
    opt = torch.optim.SGD(params, lr=2000.0)
    for _ in range(20):
        opt.zero_grad()
        strat.extra_loss(model, None).backward()
        opt.step()
    assert strat.extra_loss(model, None).item() < 0.5 * term_before
    assert centred_distance() < before


def test_proximal_term_small_delta_is_half_weighted_variance(tiny_lora):
    # METHOD.md: KL ~ 1/2 Var_p(delta), p = softmax(v_prev), for small delta
    model, _, _ = tiny_lora
    strat = create(_cfg(1.0))
    strat.setup_block(model, 1, None)
    _, a, _ = lora_layers(model)[0]
    prev = a.detach().clone().reshape(-1)
    delta = 1e-2 * torch.randn_like(prev)
    p = torch.softmax(prev.double(), 0)
    var = float((p * delta.double() ** 2).sum() - (p * delta.double()).sum() ** 2)
    kl = softmax_kl(prev + delta, torch.log_softmax(prev, 0)).item()
    assert kl == pytest.approx(0.5 * var, rel=2e-2)
    assert proximal_term(model, strat.anchors).item() == 0.0


def test_tiny_drift_gives_a_positive_accurate_term(tiny_lora):
    # a drift of 1e-5 per entry: KL ~ 1e-11, below float32 rounding of the log-probabilities
    model, _, _ = tiny_lora
    strat = create(_cfg(1.0))
    strat.setup_block(model, 1, None)
    _, a, _ = lora_layers(model)[0]
    prev = a.detach().clone().double().reshape(-1)
    delta = 1e-5 * torch.randn(prev.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = torch.softmax(prev, 0)
    half_var = 0.5 * float((p * delta**2).sum() - (p * delta).sum() ** 2)
    kl = softmax_kl((prev + delta), torch.log_softmax(prev, 0)).item()
    assert kl > 0 and kl == pytest.approx(half_var, rel=1e-3)


def test_tau_divides_the_entries_before_each_softmax(tiny_lora):
    model, _, _ = tiny_lora
    strat = create({"name": "peso", "lam": 2.0, "tau": 0.25})
    strat.setup_block(model, 1, None)
    anchors = {n: (a.detach().clone(), b.detach().clone()) for n, a, b in lora_layers(model)}
    with torch.no_grad():
        for _, a, b in lora_layers(model):
            a.add_(0.05 * torch.randn_like(a))
            b.add_(0.05 * torch.randn_like(b))
    by_hand = np.mean(
        [
            _np_kl(a.detach().numpy() / 0.25, anchors[n][0].numpy() / 0.25)
            + _np_kl(b.detach().numpy() / 0.25, anchors[n][1].numpy() / 0.25)
            for n, a, b in lora_layers(model)
        ]
    )
    assert strat.extra_loss(model, None).item() == pytest.approx(2.0 * by_hand, rel=1e-5)
    plain = create(_cfg(2.0))
    plain.anchors = {
        n: tuple(torch.log_softmax(x.reshape(-1).double(), 0) for x in ab) for n, ab in anchors.items()
    }
    assert plain.extra_loss(model, None).item() < 0.2 * strat.extra_loss(model, None).item()  # ~ 1 / tau^2


def test_a_lambda_sweep_is_plain_list_entries_with_labels():
    cfg = RunConfig.model_validate(
        {
            "data": {"path": "."},
            "methods": [
                "single",
                {"name": "peso", "lam": 5.0},
                {"name": "peso", "lam": 1e4, "label": "peso-1e4"},
            ],
        }
    )
    methods = [create(m) for m in cfg.methods]
    assert [(m.name, m.label) for m in methods] == [
        ("single", "single"),
        ("peso", "peso"),
        ("peso", "peso-1e4"),
    ]
    assert [m.lam for m in methods[1:]] == [5.0, 1e4]


def test_method_settings_are_checked_by_the_method(tmp_path):
    from peso.config import load_config

    path = tmp_path / "c.yaml"
    for methods, fragment in (
        ("[{name: peso, lamda: 3}]", "methods[0] (peso): 'lamda': unknown setting"),
        ("[{name: peso, lam: -1}]", "methods[0] (peso): 'lam'"),
        ("[single, {name: ewc, lam: 1, targets: 0}]", "methods[1] (ewc): 'targets'"),
        ("[peso, peso]", "['peso'] listed twice"),
        ("[{name: peso, label: a/b}]", "folder name"),
        ("[{lam: 3}]", "neither a method name nor a mapping with 'name'"),
        ("[{name: single, continual_lr_scale: 0}]", "methods[0] (single): 'continual_lr_scale'"),
        ("[{name: frozen, continual_epochs: 2}]", "methods[0] (frozen): 'continual_epochs': unknown setting"),
        ("[{name: popular, continual_lr_scale: 1}]", "methods[0] (popular): 'continual_lr_scale': unknown"),
    ):
        path.write_text(f"data: {{path: .}}\nmethods: {methods}\n")
        with pytest.raises(PesoError) as e:
            load_config(path)
        assert fragment in str(e.value), (methods, str(e.value))
    path.write_text("data: {path: .}\npeso: {lam: 3, sweep: [1.0]}\nmethods: [peso]\n")
    with pytest.raises(PesoError) as e:
        load_config(path)
    assert "'peso:' section is gone" in str(e.value) and "{name: peso, lam: 1000.0}" in str(e.value)


@pytest.mark.parametrize("rows", ["matrix", "row"])
def test_the_term_can_hold_the_item_rows_too(tiny_lora, rows):
    from peso.strategies.peso import item_row_params

    model, _, _ = tiny_lora
    strat = create({"name": "peso", "lam": 2.0, "rows": rows})
    strat.setup_block(model, 1, None)
    assert strat.extra_loss(model, None).item() == 0.0  # at the block start
    ((name, delta),) = item_row_params(model)
    before = delta.detach().clone()
    with torch.no_grad():
        delta.add_(0.1 * torch.randn_like(delta))
    lora = [
        _np_kl(a.detach().numpy(), a.detach().numpy()) * 0 for _, a, _ in lora_layers(model)
    ]  # A, B unmoved
    cur, prev = delta.detach().numpy(), before.numpy()
    row_terms = (
        [_np_kl(cur, prev)] if rows == "matrix" else [_np_kl(cur[r], prev[r]) for r in range(len(cur))]
    )
    by_hand = 2.0 * (sum(lora) + sum(row_terms)) / (len(lora) + len(row_terms))
    assert strat.extra_loss(model, None).item() == pytest.approx(by_hand, rel=1e-4)  # returned in float32
    plain = create({"name": "peso", "lam": 2.0})
    plain.setup_block(model, 1, None)
    assert plain.extra_loss(model, None).item() == 0.0  # the default leaves the rows free


def test_peso_adaptive_sets_lambda_from_the_popularity_gain_of_the_block(tiny_lora):
    from peso.data.samples import BlockSamples
    from peso.pack import pack
    from peso.strategies.base import BlockData
    from peso.strategies.peso import popularity_gain

    model, space, index = tiny_lora

    def block(items: list[list[int]]) -> BlockSamples:
        seqs = [np.array(s) for s in items]
        return BlockSamples(1, [f"u{i}" for i in range(len(seqs))], seqs, np.zeros(len(seqs), dtype=int), 3)

    # each user's targets (positions 0-2) make one segment: fold 0 is user 0, fold 1 user 1
    before = pack(block([[0, 1, 2, 3, 4], [0, 1, 2, 5, 6]]), space, "train")  # 0, 1, 2 twice
    now = pack(block([[7, 8, 9, 3, 4], [7, 8, 0, 5, 6]]), space, "train")  # 7, 8, 9 and 7, 8, 0
    # by hand, add-one over {0, 1, 2, 7, 8, 9} + unseen = 7 IDs: a fold's 3 counts -> total 10, before's 6 -> 13
    fold0 = (2 * math.log(2 / 10) + math.log(1 / 10)) / 3 - math.log(1 / 13)  # 7, 8, 9 under fold 1 / before
    fold1 = (2 * math.log(2 / 10) + math.log(1 / 10)) / 3 - (2 * math.log(1 / 13) + math.log(3 / 13)) / 3
    gain = (fold0 + fold1) / 2
    assert popularity_gain(before, now) == pytest.approx(gain)
    assert popularity_gain(before, before) == pytest.approx(math.log((2 / 7) / (3 / 10)))  # < 0: nothing new
    strat = create({"name": "peso-adaptive", "lam": 100.0, "kappa": 2.0})
    strat.setup_block(model, 1, BlockData(now, before, 8))
    assert strat.lam == pytest.approx(100.0 * math.exp(-2.0 * gain))
    strat.setup_block(model, 2, BlockData(before, before, 8))
    assert strat.lam == 100.0  # a negative gain keeps PESO's full weight


def test_peso_select_keeps_the_lambda_of_lowest_validation_loss_and_equals_peso_at_it(tmp_path):
    import csv

    import yaml
    from safetensors.torch import load_file

    from peso.cli import main
    from tests.test_cli_errors import write_data

    lam = 1.0e4  # large enough that block 1 comes out other than `single`'s
    methods = [
        "single",
        {"name": "peso", "lam": lam, "label": "fixed"},
        {"name": "peso-select", "lams": [0.0, lam], "label": "select"},
        {"name": "peso-select", "lams": [lam], "label": "select-one"},
    ]
    config = {
        "data": {"path": str(write_data(tmp_path / "data"))},
        "model": {"name": "tiny", "tiny": {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32}},
        "train": {"epochs": 2, "batch_size": 2, "warmup_steps": 0, "lr": 1e-2},
        "decode": {"beam": 10, "top_k": 10},
        "methods": methods,
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    assert main(["run", "--config", str(tmp_path / "run.yaml"), "--out", str(out)]) == 0
    results = {r["method"]: r for r in csv.DictReader((out / "results.csv").open()) if r["block"] == "1"}
    log = [r for r in csv.DictReader((out / "training.csv").open()) if r["block"] == "1"]
    losses = {m: [float(r["valid_loss"]) for r in log if r["method"] == m] for m in results}
    assert losses["single"] != losses["fixed"]  # the two candidates differ
    # each candidate trains as its own method would, from the same start: one epoch series each, in order
    assert losses["select"] == losses["single"] + losses["fixed"]
    assert losses["select-one"] == losses["fixed"]
    passes = [(r["pass"], r["epoch"]) for r in log if r["method"] == "select"]
    assert passes == [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")]  # the lambda's pass, 2 epochs each
    assert {r["pass"] for r in log if r["method"] != "select"} == {"1"}

    def adapter(method: str) -> dict[str, torch.Tensor]:
        folder = out / "seed_0" / method / "block_1" / "adapter"
        return {
            **load_file(folder / "adapter_model.safetensors"),
            **load_file(folder / "item_rows.safetensors"),
        }

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    assert not same(adapter("single"), adapter("fixed"))
    # the lower best validation loss of block 1 wins; what is kept is that candidate's adapter, bit for bit
    winner = "single" if min(losses["single"]) <= min(losses["fixed"]) else "fixed"
    assert same(adapter("select"), adapter(winner))
    assert same(adapter("select-one"), adapter("fixed"))
    decoded = (out / "seed_0" / "select" / "block_1" / "recommendations.csv").read_text()
    assert decoded == (out / "seed_0" / winner / "block_1" / "recommendations.csv").read_text()


def test_peso_select_ties_keep_the_first_lambda_and_the_block_costs_every_training(tiny_lora):
    from peso.strategies.base import Block, BlockData, State

    model, _, _ = tiny_lora
    start = {n: b.detach().clone() for n, _, b in lora_layers(model)}
    seen: list[float] = []

    def train(model, data, valid, extra_loss=None, continual=True):
        lam = strat.lam
        seen.append(lam)
        with torch.no_grad():
            for _, _, b in lora_layers(model):
                b.add_(lam)  # every candidate starts from the block's start: b = start + lam after it

        class Report:
            seconds, targets, valid_losses = 2.0, 10, [3.0, {0.0: 1.0, 5.0: 1.0, 9.0: 2.0}[lam]]

        return Report()

    strat = create({"name": "peso-select", "lams": [9.0, 5.0, 0.0]})
    report = strat.run_block(model, Block(1, BlockData(None, None, 8), None, lambda: [], train, None))
    assert seen == [9.0, 5.0, 0.0] and strat.lam == 5.0  # 5 and 0 tie at 1.0: the first of them is kept
    assert report.seconds == 6.0 and report.targets == 30
    for n, _, b in lora_layers(model):
        assert torch.equal(b, start[n] + 5.0)
    again = create({"name": "peso-select", "lams": [9.0, 5.0, 0.0]})
    again.load_state(model, State(meta=strat.state(model).meta))
    assert again.chosen == [5.0]
    with pytest.raises(ValueError, match="'lams'"):
        create({"name": "peso-select", "lams": [1.0, -1.0]})
    with pytest.raises(ValueError, match="'lams'"):
        create({"name": "peso-select", "lams": []})
