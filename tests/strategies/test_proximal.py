"""The other proximal terms (l2, orthogonal, output-kl, ewc, peso-all), each against a hand computation."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from peso.data.samples import BlockSamples
from peso.inputs import encode
from peso.model import lora_layers
from peso.pack import forward_targets, pack
from peso.strategies import REGISTRY, AdapterStrategy, create
from peso.strategies.base import BlockData, RunContext
from peso.tokenize.trie import Trie

NEW = ["l2", "orthogonal", "output-kl", "ewc", "peso-all"]


def _cfg(name: str, **settings) -> dict:
    return {"name": name, **settings}


def _snapshot(model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {n: (a.detach().numpy().copy(), b.detach().numpy().copy()) for n, a, b in lora_layers(model)}


def _perturb(model, scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, a, b in lora_layers(model):
            a.add_(scale * torch.randn(a.shape, generator=g))
            b.add_(scale * torch.randn(b.shape, generator=g))


def _samples(n_items: int, seed: int = 0) -> BlockSamples:
    """Users of 3..8 items, histories of 3: a few dozen training targets."""
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, n_items, size=int(rng.integers(4, 9))) for _ in range(6)]
    return BlockSamples(0, [f"u{i}" for i in range(len(seqs))], seqs, np.zeros(len(seqs), dtype=int), 3)


def _np_kl_rows(cur: np.ndarray, prev: np.ndarray) -> float:
    """Mean over rows of KL(softmax(cur) || softmax(prev)), in float64."""
    cur, prev = cur.astype(np.float64), prev.astype(np.float64)
    logp = cur - cur.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    logq = prev - prev.max(1, keepdims=True)
    logq -= np.log(np.exp(logq).sum(1, keepdims=True))
    return float((np.exp(logp) * (logp - logq)).sum(1).mean())


# --- registry and settings ----------------------------------------------------------------------------


def test_every_new_name_is_registered_and_created_with_its_own_settings():
    lams = {"l2": 0.3, "orthogonal": 0.2, "output-kl": 0.7, "ewc": 11.0, "peso-all": 5.0}
    for name in NEW:
        assert name in REGISTRY
        strat = create(_cfg(name, lam=lams[name]))
        assert isinstance(strat, AdapterStrategy) and strat.name == name and strat.lam == lams[name]
    assert create(_cfg("ewc", targets=64)).settings.targets == 64


def test_baseline_settings_are_validated():
    with pytest.raises(ValueError, match="'lam'"):
        create(_cfg("l2", lam=-1.0))
    with pytest.raises(ValueError, match="'targets'"):
        create(_cfg("ewc", targets=0))
    with pytest.raises(ValueError, match="unknown setting"):
        create(_cfg("l2", weight=1.0))


@pytest.mark.parametrize("name", NEW)
def test_no_term_before_the_first_block(tiny_lora, name):
    model, _, _ = tiny_lora
    assert create(name).extra_loss(model, None) is None  # block 0: nothing to anchor to


@pytest.mark.parametrize("name", ["l2", "orthogonal", "peso-all"])
def test_lambda_zero_is_single(tiny_lora, name):
    model, _, _ = tiny_lora
    strat = create(_cfg(name, lam=0.0))
    strat.setup_block(model, 1, None)
    assert strat.extra_loss(model, None) is None


# --- l2 -----------------------------------------------------------------------------------------------


def test_l2_is_mean_of_frobenius_norms_not_squared(tiny_lora):
    model, _, _ = tiny_lora
    strat = create(_cfg("l2", lam=2.0))
    strat.setup_block(model, 1, None)
    assert strat.extra_loss(model, None).item() == 0.0
    # every entry of every A moves by 0.1, B stays: ||dA||_F = 0.1 sqrt(r * in)
    with torch.no_grad():
        for _, a, _ in lora_layers(model):
            a.add_(0.1)
    by_hand = 2.0 * np.mean([0.1 * math.sqrt(a.numel()) for _, a, _ in lora_layers(model)])
    assert strat.extra_loss(model, None).item() == pytest.approx(by_hand, rel=1e-6)


def test_l2_random_drift_and_finite_gradient_at_block_start(tiny_lora):
    model, _, _ = tiny_lora
    strat = create(_cfg("l2", lam=0.5))
    strat.setup_block(model, 1, None)
    loss = strat.extra_loss(model, None)
    loss.backward()  # A == A_prev: the norm's gradient must be 0, not NaN
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for _, a, b in lora_layers(model) for p in (a, b))
    before = _snapshot(model)
    _perturb(model, 0.05, seed=1)
    by_hand = 0.5 * np.mean(
        [
            np.linalg.norm(a.detach().numpy() - before[n][0])
            + np.linalg.norm(b.detach().numpy() - before[n][1])
            for n, a, b in lora_layers(model)
        ]
    )
    assert strat.extra_loss(model, None).item() == pytest.approx(by_hand, rel=1e-5)


# --- orthogonal ---------------------------------------------------------------------------------------


def test_orthogonal_term_on_explicit_matrices():
    strat = create("orthogonal")
    a0 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # r=2 x in=3
    b0 = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [3.0, 0.0]])  # out=4 x r=2
    # rows of A orthogonal to rows of A_prev: 0; A A_prev^T = [[0, 0], [0, 0]]
    a = torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.0, -1.0]])
    b = torch.zeros(4, 2)
    assert strat.term(a, b, a0, b0).item() == 0.0
    # A = A_prev: ||A A^T||^2 = 1 + 16; B = B_prev: B^T B = [[10, 1], [1, 2]] -> 100 + 1 + 1 + 4
    assert strat.term(a0, b0, a0, b0).item() == pytest.approx(17.0 + 106.0)


def test_orthogonal_is_large_at_the_block_start_and_matches_numpy(tiny_lora):
    model, _, _ = tiny_lora
    strat = create(_cfg("orthogonal", lam=0.5))
    strat.setup_block(model, 1, None)
    prev = _snapshot(model)

    def by_hand() -> float:
        return 0.5 * np.mean(
            [
                ((a.detach().numpy() @ prev[n][0].T) ** 2).sum()
                + ((b.detach().numpy().T @ prev[n][1]) ** 2).sum()
                for n, a, b in lora_layers(model)
            ]
        )

    start = strat.extra_loss(model, None).item()
    assert start > 0 and start == pytest.approx(by_hand(), rel=1e-5)  # the definition: not 0 when inherited
    _perturb(model, 0.1, seed=2)
    assert strat.extra_loss(model, None).item() == pytest.approx(by_hand(), rel=1e-5)


# --- output-kl ----------------------------------------------------------------------------------------


@pytest.fixture
def packed(tiny_lora):
    _, space, index = tiny_lora
    return pack(_samples(len(index.items)), space, "train")


@pytest.fixture(params=["vocab", "trie"])
def packed_either(tiny_lora, request):
    """`packed`, and the same under model.item_softmax: trie over the items the samples meet."""
    _, space, index = tiny_lora
    s = _samples(len(index.items))
    if request.param == "vocab":
        return pack(s, space, "train")
    space.item_softmax = "trie"
    known = np.unique(index.sid[np.concatenate(s.sequences)])
    return pack(s, space, "train", trie=Trie(index.sid_codes[known], index.level_sizes, known))


def test_output_kl_zero_at_block_start(tiny_lora, packed_either):
    model, _, _ = tiny_lora
    packed = packed_either
    strat = create(_cfg("output-kl", lam=1.0))
    strat.setup_block(model, 1, None)
    step = forward_targets(model, packed, np.arange(len(packed)))
    assert step.logits.shape[0] == int(packed.targets.sum()) * 3  # 3 item tokens per target
    assert abs(strat.extra_loss(model, step).item()) < 1e-7


def test_output_kl_equals_kl_of_two_explicit_forward_passes(tiny_lora, packed_either):
    model, _, _ = tiny_lora
    packed = packed_either
    strat = create(_cfg("output-kl", lam=3.0))
    strat.setup_block(model, 1, None)
    rows = np.arange(len(packed))
    with torch.no_grad():
        prev_logits = forward_targets(model, packed, rows).logits.numpy().copy()
    _perturb(model, 0.2, seed=3)
    with torch.no_grad():  # the item-token rows are part of the previous model too
        for n, p in model.named_parameters():
            if "trainable_tokens_delta" in n:
                p.add_(0.5 * torch.randn_like(p))
    step = forward_targets(model, packed, rows)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = strat.extra_loss(model, step)
    by_hand = 3.0 * _np_kl_rows(step.logits.detach().numpy(), prev_logits)
    assert by_hand > 1e-3 and loss.item() == pytest.approx(by_hand, rel=1e-4)
    # the swap left the model as it was, and the current step's graph can still be differentiated
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    loss.backward()
    assert any(float(a.grad.abs().sum()) > 0 for _, a, _ in lora_layers(model))
    assert strat.extra_loss(model, step).item() == loss.item()  # the block-start snapshot is intact too


def test_output_kl_sees_the_item_rows(tiny_lora, packed):
    model, _, _ = tiny_lora
    strat = create(_cfg("output-kl", lam=1.0))
    strat.setup_block(model, 1, None)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "trainable_tokens_delta" in n:
                p.add_(0.5)
    step = forward_targets(model, packed, np.arange(len(packed)))
    assert strat.extra_loss(model, step).item() > 1e-4


# --- ewc ----------------------------------------------------------------------------------------------


def _per_target_grads(
    model, space, samples: BlockSamples, n: int, temperature: float
) -> list[list[np.ndarray]]:
    """Gradient wrt each LoRA A/B of each of the first `n` training targets' negative log-likelihood (its
    tokens' cross-entropy, summed) alone: one unpacked pass and one backward each."""
    params = [p for _, a, b in lora_layers(model) for p in (a, b)]
    enc = encode(samples, space, "train")
    out = []
    for prompt, target in list(zip(enc.prompts, enc.targets.tolist(), strict=True))[:n]:
        logits = model(input_ids=torch.tensor([prompt + target])).logits[0, len(prompt) - 1 : -1]
        ce = F.cross_entropy(logits / temperature, torch.tensor(target), reduction="sum")
        out.append([g.numpy() for g in torch.autograd.grad(ce, params)])
    return out


@pytest.mark.parametrize(("share", "batch_size"), [(False, 1), (False, 3), (True, 2), (True, 1000)])
def test_ewc_fisher_is_the_mean_squared_per_target_gradient_whatever_the_batches(
    tiny_lora, share, batch_size
):
    model, space, index = tiny_lora
    s = _samples(len(index.items))
    previous = pack(s, space, "train", share=share)  # packed segments hold several targets each
    cap = 7
    assert int(previous.targets.sum()) > cap
    strat = create(_cfg("ewc", lam=40.0, targets=cap), RunContext(temperature=0.8))
    strat.setup_block(model, 1, BlockData(previous, previous, batch_size))
    rows = np.concatenate(list(BlockData(previous, previous, batch_size).batches("previous", cap)))
    used = int(previous.targets[rows].sum())  # whole segments: the cap may take a few targets more
    per = _per_target_grads(model, space, s, used, 0.8)
    fisher = [np.mean([g[i] ** 2 for g in per], axis=0) for i in range(len(per[0]))]
    assert len(strat.fisher) == len(fisher) == 2 * len(lora_layers(model))
    for got, want in zip(strat.fisher, fisher, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-12)
    assert sum(float(f.sum()) for f in strat.fisher) > 0

    assert strat.extra_loss(model, None).item() == 0.0
    prev = [p.detach().numpy().copy() for _, a, b in lora_layers(model) for p in (a, b)]
    _perturb(model, 0.1, seed=4)
    now = [p.detach().numpy() for _, a, b in lora_layers(model) for p in (a, b)]
    by_hand = (
        40.0 * sum(float((f * (x - x0) ** 2).sum()) for f, x, x0 in zip(fisher, now, prev, strict=True)) / 2
    )
    assert strat.extra_loss(model, None).item() == pytest.approx(by_hand, rel=1e-3)


def test_ewc_restores_training_mode_and_leaves_no_grads(tiny_lora, packed):
    model, _, _ = tiny_lora
    model.train()
    strat = create("ewc")
    strat.setup_block(model, 1, BlockData(packed, packed, 8))
    assert model.training
    assert all(p.grad is None for p in model.parameters())


# --- peso-all -----------------------------------------------------------------------------------------


def test_peso_all_is_the_mean_of_the_peso_terms_of_every_past_adapter(tiny_lora):
    model, _, _ = tiny_lora
    strat = create(_cfg("peso-all", lam=2.0))
    first, second = create(_cfg("peso", lam=2.0)), create(_cfg("peso", lam=2.0))
    strat.setup_block(model, 1, None)
    first.setup_block(model, 1, None)
    assert strat.extra_loss(model, None).item() == 0.0
    _perturb(model, 0.3, seed=5)  # training of block 1
    strat.setup_block(model, 2, None)
    second.setup_block(model, 2, None)
    _perturb(model, 0.3, seed=6)  # training of block 2
    t1, t2 = first.extra_loss(model, None).item(), second.extra_loss(model, None).item()
    assert t1 != pytest.approx(t2, rel=1e-2)  # the two anchors differ: the test can tell mean from latest
    assert strat.extra_loss(model, None).item() == pytest.approx((t1 + t2) / 2, rel=1e-6)
    # a new run of blocks (the runner restores block 0 per method): only the new anchor counts
    strat.setup_block(model, 1, None)
    assert len(strat.past) == 1 and strat.extra_loss(model, None).item() == 0.0


def test_peso_all_exports_every_past_anchor_and_grows_by_one_adapter_per_block(tiny_lora, tmp_path):
    model, _, _ = tiny_lora
    strat, peso = create("peso-all"), create("peso")
    starts, extra = [], []
    for block in (1, 2, 3):
        strat.setup_block(model, block, None)
        starts.append(_snapshot(model))
        _perturb(model, 0.3, seed=block)  # training of the block
        ours = strat.export(model, tmp_path / f"all_{block}")
        extra.append(ours - peso.export(model, tmp_path / f"peso_{block}"))  # PESO keeps the adapter only
    saved = load_file(str(tmp_path / "all_3" / "past_anchors.safetensors"))
    assert len(saved) == 3 * 2 * len(starts[0])
    for i, snap in enumerate(starts):  # the A/B as they were at each block start, exactly
        for name, (a, b) in snap.items():
            assert np.array_equal(saved[f"block_start_{i + 1}.{name}.A"].numpy(), a)
            assert np.array_equal(saved[f"block_start_{i + 1}.{name}.B"].numpy(), b)
    one = sum(a.nbytes + b.nbytes for a, b in starts[0].values())  # one adapter's A/B
    assert one <= extra[0] < one + 4096  # + the safetensors header
    assert all(
        one <= later - earlier < one + 4096 for earlier, later in zip(extra[:-1], extra[1:], strict=True)
    )
