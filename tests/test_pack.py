"""Packed training equals per-example training: the same loss and the same gradients, for bare item tokens
(causal mask) and for the instruction prompt (tree mask), on two-layer models where sharing a pass wrongly
would show."""

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, LlamaForCausalLM

from peso.config import ModelConfig
from peso.data.samples import BlockSamples
from peso.inputs import encode
from peso.pack import IGNORE, pack
from peso.tokenize.trie import Trie
from peso.train import packed_loss, plan_batches
from tests.conftest import adapted, small_index

HISTORY = 3


def samples(n_items: int, seed: int = 0, empty_history: bool = True) -> BlockSamples:
    """Users of 3..10 items, some with earlier-block items, so both segment kinds occur; users without
    earlier items give empty-history targets (their first item) unless `empty_history` is off."""
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, n_items, size=int(rng.integers(3, 11))) for _ in range(9)]
    starts = np.array([0, 0] + [int(rng.integers(0, len(s) - 2)) for s in seqs[2:]])
    s = BlockSamples(1, [f"u{i}" for i in range(len(seqs))], seqs, starts, HISTORY, empty_history)
    assert any(len(s.window(u, p)) == 0 for u, p in s.examples("train")) == empty_history
    return s


def per_example_loss(model, space, s: BlockSamples, split: str, temperature: float) -> torch.Tensor:
    """The reference: each target alone, its prompt (window) then its target, one forward pass each."""
    enc = encode(s, space, split)
    losses = []
    for prompt, target in zip(enc.prompts, enc.targets.tolist(), strict=True):
        ids = torch.tensor([prompt + target])
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
        losses.append(F.cross_entropy(logits, torch.tensor(target), reduction="none"))
    return torch.cat(losses).mean()


def grads(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(model, space, s: BlockSamples, split: str, share: bool) -> None:
    packed = pack(s, space, split, share=share)
    ref = per_example_loss(model, space, s, split, 0.8)
    ref_g = grads(model, ref)
    got = packed_loss(model, packed, np.arange(len(packed)), 0.8)
    got_g = grads(model, got)
    assert abs(got.item() - ref.item()) < 1e-5
    assert got_g.keys() == ref_g.keys() and len(got_g) > 0
    for n in ref_g:
        assert torch.allclose(got_g[n], ref_g[n], atol=1e-5, rtol=1e-4), n
    assert int(packed.targets.sum()) == len(s.examples(split))


@pytest.fixture
def prompted2(local_checkpoint, tmp_path):
    """The stand-in LLM with two layers: prompt prefix, separators, suffix and EOS around the items."""
    folder = tmp_path / "llm2"
    shutil.copytree(local_checkpoint, folder)
    config = AutoConfig.from_pretrained(folder)
    config.num_hidden_layers = 2
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(folder)
    index = small_index()
    cfg = ModelConfig.model_validate({"name": str(folder), "lora": {"target_modules": ["q_proj", "v_proj"]}})
    return adapted(cfg, index)


@pytest.mark.parametrize("empty_history", [True, False])
@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("split", ["train", "valid"])
def test_packed_equals_per_example_with_bare_item_tokens(tiny_lora, share, split, empty_history):
    model, space, index = tiny_lora
    s = samples(len(index.items), empty_history=empty_history)
    assert pack(s, space, split).causal
    assert_same(model, space, s, split, share)


@pytest.mark.parametrize("empty_history", [True, False])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_equals_per_example_with_the_instruction_prompt(prompted2, attn, empty_history):
    model, space, index = prompted2
    model.get_base_model().set_attn_implementation(attn)
    s = samples(len(index.items), seed=1, empty_history=empty_history)
    packed = pack(s, space, "train")
    assert not packed.causal and space.suffix and space.separator and space.append_eos
    assert_same(model, space, s, "train", share=True)


def test_a_user_within_the_window_is_one_segment_and_later_targets_one_each(tiny_lora):
    _, space, _ = tiny_lora
    seq = np.arange(8)  # targets 0..5 (6 is validation, 7 test); windows of 3
    s = BlockSamples(0, ["u"], [seq], np.array([0]), HISTORY)
    packed = pack(s, space, "train")
    assert packed.targets.tolist() == [4, 1, 1]  # targets 0..3 share items 0..3; 4 and 5 stand alone
    first = packed.segments[0]
    assert first.ids.tolist() == space.prompt(seq[:4])
    labelled = first.labels[first.labels != IGNORE].tolist()
    assert labelled == [t for p in (0, 1, 2, 3) for t in space.target(p)]  # 0 from the prompt's start alone
    assert packed.segments[2].ids.tolist() == space.prompt(seq[2:6])  # window 2,3,4 then target 5
    shared, alone = sum(packed.lengths), sum(pack(s, space, "train", share=False).lengths)
    assert shared < alone


def test_batches_cover_every_segment_once_with_about_batch_size_targets():
    rng = np.random.default_rng(0)
    targets = rng.integers(1, 6, size=500)
    lengths = rng.integers(5, 90, size=500)
    batches = plan_batches(targets, lengths, 16, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    sizes = sorted(int(targets[b].sum()) for b in batches)
    assert all(abs(n - 16) < 5 for n in sizes[1:])  # a segment holds at most 5 targets; one batch is the rest
    assert len(batches) == int(np.ceil(targets.sum() / 16)) or len(batches) == targets.sum() // 16
    # within a batch, lengths are close: padding stays small next to a random batch
    pad = np.mean([lengths[b].max() - lengths[b].mean() for b in batches])
    assert pad < 0.5 * (lengths.max() - lengths.mean())


def children_of(codes: np.ndarray) -> dict[tuple[int, ...], list[int]]:
    """prefix -> the codes that continue it among `codes`, by a plain loop (the hand computation)."""
    out: dict[tuple[int, ...], set[int]] = {}
    for row in codes.tolist():
        for d in range(len(row)):
            out.setdefault(tuple(row[:d]), set()).add(row[d])
    return {k: sorted(v) for k, v in out.items()}


def trie_per_example_loss(model, space, s: BlockSamples, split: str, known: np.ndarray, temperature: float):
    """Each item token's cross-entropy over the codes that continue its target's prefix among the `known`
    IDs, EOS over the vocabulary; one forward pass per target."""
    enc, children = encode(s, space, split), children_of(space.codes[known])
    losses = []
    for prompt, target, item in zip(enc.prompts, enc.targets.tolist(), enc.items.tolist(), strict=True):
        logits = model(input_ids=torch.tensor([prompt + target])).logits[0, len(prompt) - 1 : -1].float()
        logits = logits / temperature
        code = space.codes[item].tolist()
        for k, tok in enumerate(target):
            if k < len(code):
                allowed = [space.level_offsets[k] + c for c in children[tuple(code[:k])]]
                losses.append(torch.logsumexp(logits[k, allowed], 0) - logits[k, tok])
            else:
                losses.append(F.cross_entropy(logits[k], torch.tensor(tok)))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("model_kind", ["tiny", "prompted"])
def test_trie_softmax_loss_is_each_token_normalised_over_the_codes_that_continue_its_prefix(
    tiny_lora, prompted2, model_kind
):
    model, space, index = tiny_lora if model_kind == "tiny" else prompted2
    s = samples(len(index.items), seed=2)
    seen = np.unique(np.concatenate(s.sequences))
    known = np.unique(index.sid[seen])  # the catalogue: the items the block has met, not the whole index
    assert len(known) < index.n_sids
    trie = Trie(index.sid_codes[known], index.level_sizes, known)
    vocab = packed_loss(model, pack(s, space, "train"), np.arange(len(pack(s, space, "train"))), 0.8)
    space.item_softmax = "trie"
    packed = pack(s, space, "train", trie=trie)
    ref = trie_per_example_loss(model, space, s, "train", seen, 0.8)
    ref_g = grads(model, ref)
    got = packed_loss(model, packed, np.arange(len(packed)), 0.8)
    got_g = grads(model, got)
    assert abs(got.item() - ref.item()) < 1e-5
    assert got.item() < vocab.item() - 0.1  # the restriction acts: fewer competitors, a lower loss
    for n in ref_g:
        assert torch.allclose(got_g[n], ref_g[n], atol=1e-5, rtol=1e-4), n
    with pytest.raises(ValueError, match="trie"):
        pack(s, space, "train")  # a trie-softmax pack without its catalogue is a programming error
