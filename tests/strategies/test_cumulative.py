"""SumLoRA, SD-LoRA and InfLoRA against their formulas, written out by hand on the tiny model's weights."""

import numpy as np
import pytest
import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from peso.data.samples import BlockSamples
from peso.decode import recommend
from peso.model import lora_layers, merged
from peso.pack import forward_targets, pack
from peso.strategies import REGISTRY, create
from peso.strategies.base import BlockData
from peso.strategies.cumulative import CHILD, lora_modules
from peso.tokenize.trie import Trie

SUMLORA = ["sumlora-all", "sumlora-latest", "sumlora-all-inherit", "sumlora-latest-inherit"]
SDLORA = ["sdlora-all", "sdlora-latest", "sdlora-all-inherit", "sdlora-latest-inherit"]
ALL = SUMLORA + SDLORA + ["inflora"]


def unit(t: torch.Tensor) -> torch.Tensor:
    return t / torch.linalg.matrix_norm(t)


def block_samples(n_items: int, seed: int) -> BlockSamples:
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, n_items, size=int(rng.integers(4, 12))) for _ in range(10)]
    return BlockSamples(1, [f"u{i}" for i in range(10)], seqs, np.zeros(10, dtype=np.int64), 5)


@pytest.fixture
def data(tiny_lora) -> BlockData:
    _, space, index = tiny_lora
    cur = pack(block_samples(len(index.items), 1), space, "train")
    prev = pack(block_samples(len(index.items), 2), space, "train")
    return BlockData(cur, prev, batch_size=8)


def randomise_current(model: torch.nn.Module, seed: int) -> None:
    """Stand-in for a block's training: the default adapter's B becomes non-zero (A too, unless frozen)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, a, b in lora_layers(model):
            b.copy_(0.05 * torch.randn(b.shape, generator=g))
            if a.requires_grad:
                a.add_(0.05 * torch.randn(a.shape, generator=g))


def adapters(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {n: (a.detach().clone(), b.detach().clone()) for n, a, b in lora_layers(model)}


def layer_output(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return layer(x)


def by_hand(layer, x, past, coefs, current_mag=1.0) -> torch.Tensor:
    """W x + sum_i c_i x A_i^T B_i^T + m s x A^T B^T, with the weights read off the layer."""
    s = layer.scaling["default"]
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    y = x @ layer.get_base_layer().weight.T + current_mag * s * (x @ a.T) @ b.T
    for (pa, pb), c in zip(past, coefs, strict=True):
        y = y + c * (x @ pa.T) @ pb.T
    return y.detach()


def test_registry_has_the_nine_baselines():
    assert set(ALL) <= set(REGISTRY)
    assert create("sumlora-latest-inherit").keep_latest and create("sumlora-latest-inherit").inherit
    assert not create("sdlora-all").keep_latest and create("sdlora-all").magnitudes
    assert not create("inflora").normalise


def test_sumlora_output_is_w_x_plus_the_normalised_past_sum(tiny_lora):
    model, _, _ = tiny_lora
    strat = create("sumlora-all")
    end0 = adapters(model)  # the block-0 adapter
    strat.setup_block(model, 1, None)
    randomise_current(model, 1)
    end1 = adapters(model)
    strat.setup_block(model, 2, None)
    randomise_current(model, 2)
    x = torch.randn(3, 5, 32)
    for name, layer in list(lora_modules(model).items())[:3]:
        s = layer.scaling["default"]
        past = [(unit(end0[name][0]), unit(end0[name][1])), (unit(end1[name][0]), unit(end1[name][1]))]
        want = by_hand(layer, x, past, [s, s])
        assert torch.allclose(layer_output(layer, x), want, atol=1e-6)
        # not merely the plain LoRA: the past terms are there, and normalised (un-normalised would differ)
        assert not torch.allclose(layer_output(layer, x), by_hand(layer, x, [], []), atol=1e-3)
        raw = [end0[name], end1[name]]
        assert not torch.allclose(layer_output(layer, x), by_hand(layer, x, raw, [s, s]), atol=1e-3)


@pytest.mark.parametrize("name", SUMLORA + SDLORA)
def test_latest_keeps_one_past_adapter_and_all_keeps_t(tiny_lora, name):
    model, _, _ = tiny_lora
    strat = create(name)
    for t in (1, 2, 3):
        before = adapters(model)
        strat.setup_block(model, t, None)
        for n, layer in lora_modules(model).items():
            past = getattr(layer, CHILD)
            assert len(past.A) == len(past.B) == (1 if "latest" in name else t)
            # the newest past adapter is the adapter as it stood when the block began, normalised
            assert torch.allclose(past.A[-1], unit(before[n][0])) and torch.allclose(
                past.B[-1], unit(before[n][1])
            )
        randomise_current(model, t)


@pytest.mark.parametrize("name", SUMLORA + SDLORA)
def test_new_adapter_is_reinitialised_or_inherited(tiny_lora, name):
    model, _, _ = tiny_lora
    strat = create(name)
    strat.setup_block(model, 1, None)
    randomise_current(model, 5)
    before = adapters(model)
    strat.setup_block(model, 2, None)
    for n, a, b in lora_layers(model):
        if "inherit" in name:
            assert torch.equal(a, before[n][0]) and torch.equal(b, before[n][1])
        else:
            assert torch.all(b == 0)
            assert not torch.equal(a, before[n][0])
            assert a.abs().max() <= 1 / a.shape[1] ** 0.5  # kaiming-uniform(a=sqrt 5): bound 1/sqrt(fan_in)
        assert a.requires_grad and b.requires_grad


def test_sdlora_output_magnitudes_and_gradients(tiny_lora):
    model, space, _ = tiny_lora
    strat = create("sdlora-all")
    end0 = adapters(model)
    strat.setup_block(model, 1, None)
    randomise_current(model, 1)
    end1 = adapters(model)
    strat.setup_block(model, 2, None)
    randomise_current(model, 2)
    layers = lora_modules(model)
    mags = {
        id(p)
        for _, layer in layers.items()
        for p in (getattr(layer, CHILD).magnitudes, getattr(layer, CHILD).current)
    }
    assert mags <= {id(p) for p in model.parameters() if p.requires_grad}  # the optimizer will see them
    with torch.no_grad():
        for layer in layers.values():
            getattr(layer, CHILD).magnitudes.copy_(torch.tensor([0.5, 2.0]))
            getattr(layer, CHILD).current.fill_(1.5)
    x = torch.randn(2, 4, 32)
    for name, layer in list(layers.items())[:3]:
        s = layer.scaling["default"]
        past = [(unit(end0[name][0]), unit(end0[name][1])), (unit(end1[name][0]), unit(end1[name][1]))]
        assert torch.allclose(
            layer_output(layer, x), by_hand(layer, x, past, [0.5 * s, 2.0 * s], 1.5), atol=1e-6
        )

    # one optimizer step: the magnitudes (and the current adapter) move, the past directions do not
    model.train()
    directions = {n: (getattr(m, CHILD).A.clone(), getattr(m, CHILD).B.clone()) for n, m in layers.items()}
    before = {n: getattr(m, CHILD).magnitudes.detach().clone() for n, m in layers.items()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids = torch.tensor([space.prompt(np.array([1, 2, 3, 4]))])
    loss = model(input_ids=ids, labels=ids).loss
    opt.zero_grad()
    loss.backward()
    for m in layers.values():
        past = getattr(m, CHILD)
        assert past.magnitudes.grad is not None and past.magnitudes.grad.abs().sum() > 0
        assert past.current.grad is not None and past.current.grad.abs() > 0
    opt.step()
    for n, m in layers.items():
        past = getattr(m, CHILD)
        assert torch.equal(past.A, directions[n][0]) and torch.equal(past.B, directions[n][1])
        assert not torch.equal(past.magnitudes.detach(), before[n])
    # a new block: earlier magnitudes carry on, the newest past adapter starts at 1, as does the current one
    learned = {n: getattr(m, CHILD).magnitudes.detach().clone() for n, m in layers.items()}
    strat.setup_block(model, 3, None)
    for n, m in layers.items():
        past = getattr(m, CHILD)
        assert torch.equal(past.magnitudes.detach()[:2], learned[n]) and past.magnitudes[2].item() == 1.0
        assert past.current.item() == 1.0


def layer_inputs(model, packed, layer) -> torch.Tensor:
    """All real tokens' inputs of one layer over a block's training data (the input matrix H^T)."""
    rows, seen = np.arange(len(packed)), []
    handle = layer.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    with torch.no_grad():
        forward_targets(model, packed, rows)
    handle.remove()
    valid = torch.arange(seen[0].shape[1]) < torch.from_numpy(packed.lengths[rows])[:, None]
    return seen[0][valid].double()


def test_inflora_a_is_orthogonal_to_earlier_inputs_and_only_b_trains(tiny_lora, data):
    model, space, _ = tiny_lora
    strat = create("inflora")
    name, layer = next(iter(lora_modules(model).items()))
    h_prev = layer_inputs(model, data.previous, layer)  # block 0's inputs, through the block-0 model
    h_cur = layer_inputs(model, data.current, layer)
    end0 = adapters(model)
    strat.setup_block(model, 1, data)

    basis = strat.basis[name]  # GPM: orthonormal, covering inflora_energy of block 0's input energy, minimal
    k = basis.shape[1]
    assert 0 < k <= 32 - 8
    assert torch.allclose(basis.T @ basis, torch.eye(k, dtype=basis.dtype), atol=1e-8)
    energy = lambda u: float(((h_prev @ u) ** 2).sum() / (h_prev**2).sum())  # noqa: E731
    share = INFLORA_ENERGY
    assert energy(basis) >= share and energy(basis[:, :-1]) < share

    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert (a.double() @ basis).abs().max() < 1e-6  # |A U| ~ 0: rows outside earlier inputs' subspace
    assert torch.allclose(a @ a.T, torch.eye(8) / 3, atol=1e-6)  # orthogonal rows of norm 1/sqrt(3)
    # the rows span the current inputs' dominant directions once projected out of the basis
    proj = h_cur - (h_cur @ basis) @ basis.T
    top = torch.linalg.svdvals(proj)[:8]
    assert float(((proj @ a.double().T * 3**0.5) ** 2).sum()) == pytest.approx(
        float((top**2).sum()), rel=1e-6
    )
    assert torch.all(b == 0)

    # y = W x + s x A_0^T B_0^T (block 0, not normalised) + s x A^T B^T
    randomise_current(model, 3)
    x = torch.randn(2, 4, 32)
    s = layer.scaling["default"]
    assert torch.allclose(layer_output(layer, x), by_hand(layer, x, [end0[name]], [s]), atol=1e-6)

    # only B trains: one optimizer step leaves A exactly as designed
    assert not a.requires_grad and b.requires_grad
    fixed_a, old_b = a.detach().clone(), b.detach().clone()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.tensor([space.prompt(np.array([1, 2, 3, 4]))])
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert torch.equal(a, fixed_a) and not torch.equal(b, old_b)

    # next block: the basis only grows (earlier directions stay), past adapters are kept and summed
    strat.setup_block(model, 2, data)
    assert torch.allclose(strat.basis[name][:, :k], basis)
    assert len(getattr(layer, CHILD).A) == 2
    assert (layer.lora_A["default"].weight.double() @ strat.basis[name]).abs().max() < 1e-6


INFLORA_ENERGY = 0.97  # InfLoRA's default


def test_inflora_settings_come_from_the_config(tiny_lora, data):
    """InfLoRA's `energy` sets the basis: a lower share protects fewer input directions; the
    basis found still covers that share, and minimally."""
    model, _, _ = tiny_lora
    name, layer = next(iter(lora_modules(model).items()))
    h_prev = layer_inputs(model, data.previous, layer)
    energy = lambda u: float(((h_prev @ u) ** 2).sum() / (h_prev**2).sum())  # noqa: E731
    sizes = {}
    for share in (0.5, INFLORA_ENERGY):
        strat = create({"name": "inflora", "energy": share})
        strat.setup_block(model, 1, data)
        basis = strat.basis[name]
        sizes[share] = basis.shape[1]
        assert energy(basis) >= share and energy(basis[:, :-1]) < share
        strat.teardown(model)
    assert 0 < sizes[0.5] < sizes[INFLORA_ENERGY], sizes
    # inflora_targets: the subspace is estimated from the first n targets only; one target's inputs span
    # fewer directions than all of the block's, so the basis covering the same share is smaller
    strat = create({"name": "inflora", "targets": 1})
    strat.setup_block(model, 1, data)
    assert 0 < strat.basis[name].shape[1] < sizes[INFLORA_ENERGY]
    strat.teardown(model)


def test_sdlora_magnitude_init_comes_from_the_config(tiny_lora):
    model, _, _ = tiny_lora
    strat = create({"name": "sdlora-all", "magnitude_init": 0.25})
    strat.setup_block(model, 1, None)
    with torch.no_grad():
        for layer in lora_modules(model).values():
            getattr(layer, CHILD).magnitudes.fill_(3.0)  # "learned" during block 1
    strat.setup_block(model, 2, None)
    for layer in lora_modules(model).values():
        past = getattr(layer, CHILD)
        assert past.magnitudes.tolist() == [3.0, 0.25] and past.current.item() == 0.25
    strat.teardown(model)


def snapshot(model):
    return {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ALL)
def test_teardown_leaves_the_model_as_before(tiny_lora, data, name):
    model, space, _ = tiny_lora
    ids = torch.tensor([space.prompt(np.array([3, 1, 4, 1, 5]))])
    state0 = {k: v.clone() for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()}
    before, hooks_before = snapshot(model), sum(len(m._forward_hooks) for m in model.modules())
    with torch.no_grad():
        want = model(input_ids=ids).logits
    strat = create(name)
    for t in (1, 2):
        strat.setup_block(model, t, data)
        randomise_current(model, t)
    strat.teardown(model)
    set_peft_model_state_dict(model, state0)  # as the runner does before the next method
    after = snapshot(model)
    assert after.keys() == before.keys()  # no magnitude parameters left behind
    for n, (value, grad) in before.items():
        assert after[n][1] == grad, n  # InfLoRA's frozen A trains again
        assert torch.equal(after[n][0], value), n
    assert not any(CHILD in n for n, _ in model.named_modules())
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks_before
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, want)


@pytest.mark.parametrize("name", ["sumlora-all", "sdlora-latest-inherit", "inflora"])
def test_merged_decoding_equals_unmerged(tiny_lora, data, name):
    model, space, index = tiny_lora
    strat = create(name)
    for t in (1, 2):
        strat.setup_block(model, t, data)
        randomise_current(model, 10 + t)
    if strat.magnitudes:  # magnitudes away from 1, the current one included
        with torch.no_grad():
            for layer in lora_modules(model).values():
                getattr(layer, CHILD).magnitudes.uniform_(0.5, 2.0)
                getattr(layer, CHILD).current.fill_(1.7)
    ids = torch.tensor([space.prompt(np.array([1, 2, 3, 4]))])
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        want = model(input_ids=ids).logits
        with merged(model):
            got = model(input_ids=ids).logits
            past = [getattr(m, CHILD) for m in lora_modules(model).values()]
            assert all(p.folded for p in past)
        assert not any(p.folded for p in past)
        # the past terms matter: without them (hooks silenced, nothing folded) the model computes something else
        for p in past:
            p.folded = True
        plain = model(input_ids=ids).logits
        for p in past:
            p.folded = False
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(plain, want, atol=1e-3)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())  # exact weights back

    trie = Trie(index.sid_codes, index.level_sizes)
    rng = np.random.default_rng(3)
    prompts = [space.prompt(rng.integers(0, len(index.items), 6)) for _ in range(10)]
    a = recommend(model, prompts, space, trie, beam=8, top_k=5, batch_size=4, merge=True)
    b = recommend(model, prompts, space, trie, beam=8, top_k=5, batch_size=4, merge=False)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("keep", ["all", "latest"])
def test_export_grows_with_past_adapters_for_all_only(tiny_lora, tmp_path, keep):
    model, _, _ = tiny_lora
    strat = create(f"sdlora-{keep}")
    sizes = []
    for t in (1, 2, 3):
        strat.setup_block(model, t, None)
        randomise_current(model, t)
        out = tmp_path / str(t)
        out.mkdir()
        sizes.append(strat.export(model, out))
        saved = load_file(str(out / "past_adapters.safetensors"))
        n = t if keep == "all" else 1
        name, layer = next(iter(lora_modules(model).items()))
        assert saved[f"{name}.A"].shape == (n, 8, 32) and saved[f"{name}.magnitudes"].shape == (n,)
        assert torch.equal(saved[f"{name}.B"], getattr(layer, CHILD).B)
        assert sizes[-1] == sum(f.stat().st_size for f in out.iterdir() if f.suffix == ".safetensors")
    if keep == "all":
        assert sizes[0] < sizes[1] < sizes[2]
    else:
        assert sizes[0] == sizes[1] == sizes[2]
