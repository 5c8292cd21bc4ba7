import numpy as np
import pytest
import torch

from peso.decode import beam_search_batch, brute_force_scores, recommend
from peso.tokenize.trie import Trie


@pytest.mark.parametrize("attn", ["sdpa", "eager"])  # boolean and additive tree masks
def test_beam_search_equals_brute_force_when_the_beam_covers_every_id(tiny_lora, attn):
    model, space, index = tiny_lora
    model.get_base_model().set_attn_implementation(attn)
    trie = Trie(index.sid_codes, index.level_sizes)
    rng = np.random.default_rng(1)
    prompts = [space.prompt(rng.integers(0, len(index.items), int(rng.integers(1, 8)))) for _ in range(6)]
    k = 10
    sids, scores = beam_search_batch(model, prompts, space, trie, beam=index.n_sids, top_k=k)
    for r, prompt in enumerate(prompts):
        exact = brute_force_scores(model, prompt, space, index.sid_codes)
        best = torch.topk(exact, k)
        assert sids[r].tolist() == best.indices.tolist()  # same items, same order
        assert torch.allclose(scores[r], best.values, atol=1e-4)


def test_beam_never_emits_a_nonexistent_item_and_finds_high_scoring_ids(tiny_lora):
    model, space, index = tiny_lora
    trie = Trie(index.sid_codes, index.level_sizes)
    rng = np.random.default_rng(2)
    prompts = [space.prompt(rng.integers(0, len(index.items), 5)) for _ in range(8)]
    ranked = recommend(model, prompts, space, trie, beam=4, top_k=4, batch_size=3)
    assert ranked.shape == (8, 4)
    assert ((ranked >= 0) & (ranked < index.n_sids)).all()  # every generated ID is a real item's
    assert all(len(set(row)) == len(row) for row in ranked.tolist())  # no duplicates
    # batching and ordering by length must not change a user's list
    alone = [recommend(model, [p], space, trie, beam=4, top_k=4, batch_size=1)[0] for p in prompts]
    assert np.array_equal(np.stack(alone), ranked)


def test_fewer_ids_than_top_k_pads_with_minus_one(tiny_lora):
    model, space, index = tiny_lora
    codes = index.sid_codes[:3]  # a trie with only three valid IDs
    trie = Trie(codes, index.level_sizes)
    sids, scores = beam_search_batch(model, [space.prompt(np.array([0, 1]))], space, trie, beam=5, top_k=5)
    assert sorted(sids[0, :3].tolist()) == [0, 1, 2]
    assert sids[0, 3:].tolist() == [-1, -1]
    assert torch.isinf(scores[0, 3:]).all()


def test_brute_force_scores_equal_full_forward_passes_of_each_id(tiny_lora):
    model, space, index = tiny_lora
    prompt = space.prompt(np.array([5, 9, 2]))
    codes = index.sid_codes[:7]
    got = brute_force_scores(model, prompt, space, codes, chunk=3)  # several chunks of the cached prompt
    for r, row in enumerate(codes):
        target = [off + int(c) for off, c in zip(space.level_offsets, row, strict=True)]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + target])).logits[0].float(), -1)
        want = sum(logp[len(prompt) - 1 + k, t] for k, t in enumerate(target))
        assert abs(got[r].item() - want.item()) < 1e-4


def test_merged_and_unmerged_decoding_rank_alike(tiny_lora):
    model, space, index = tiny_lora
    trie = Trie(index.sid_codes, index.level_sizes)
    rng = np.random.default_rng(3)
    prompts = [space.prompt(rng.integers(0, len(index.items), 6)) for _ in range(10)]
    a = recommend(model, prompts, space, trie, beam=8, top_k=5, batch_size=4, merge=True)
    b = recommend(model, prompts, space, trie, beam=8, top_k=5, batch_size=4, merge=False)
    assert np.array_equal(a, b)


def _prompted(local_checkpoint):
    """The stand-in LLM (untied head, instruction prompt, response ending in EOS) with a random adapter."""
    from peso.settings import ModelConfig
    from tests.conftest import adapted, small_index

    cfg = ModelConfig.model_validate(
        {"name": str(local_checkpoint), "lora": {"target_modules": ["q_proj", "v_proj"]}}
    )
    torch.manual_seed(0)
    model, space, index = adapted(cfg, small_index())
    with torch.no_grad():  # item rows of the untied head spread out: p(EOS | ID) differs between IDs
        for n, p in model.named_parameters():
            if "trainable_tokens" in n:
                p.normal_(0, 0.5)
    return model, space, index


def test_prompted_beam_scores_include_the_end_of_the_response(local_checkpoint):
    model, space, index = _prompted(local_checkpoint)
    assert space.append_eos
    trie = Trie(index.sid_codes, index.level_sizes)
    rng = np.random.default_rng(4)
    prompts = [space.prompt(rng.integers(0, len(index.items), int(rng.integers(1, 6)))) for _ in range(5)]
    sids, scores = beam_search_batch(model, prompts, space, trie, beam=index.n_sids, top_k=10)
    for r, prompt in enumerate(prompts):
        exact = brute_force_scores(model, prompt, space, index.sid_codes)  # log p(ID) + log p(EOS | ID)
        best = torch.topk(exact, 10)
        assert sids[r].tolist() == best.indices.tolist()
        assert torch.allclose(scores[r], best.values, atol=1e-4)


@pytest.mark.parametrize("softmax", ["vocab", "trie"])
def test_prompted_top10_equals_generate_with_prefix_allowed_tokens(local_checkpoint, softmax):
    """`trie`: generate with peso's TrieRenormalise on the ID's levels (EOS keeps the vocabulary's score)."""
    from peso.decode import generate_reference

    model, space, index = _prompted(local_checkpoint)
    space.item_softmax = softmax
    known = np.arange(index.n_sids) if softmax == "vocab" else np.arange(0, index.n_sids, 2)
    trie = Trie(index.sid_codes[known], index.level_sizes, known)
    rng = np.random.default_rng(5)
    prompts = [space.prompt(rng.integers(0, len(index.items), int(rng.integers(1, 6)))) for _ in range(12)]
    ours = recommend(model, prompts, space, trie, beam=16, top_k=10, batch_size=4, merge=False)
    theirs = generate_reference(model, prompts, space, trie, beam=16, top_k=10, batch_size=4)
    assert np.array_equal(ours, theirs)


def test_compiled_decoding_gives_the_same_lists(tiny_lora):
    model, space, index = tiny_lora
    trie = Trie(index.sid_codes, index.level_sizes)
    rng = np.random.default_rng(4)
    prompts = [space.prompt(rng.integers(0, len(index.items), int(rng.integers(1, 7)))) for _ in range(10)]
    eager = recommend(model, prompts, space, trie, beam=8, top_k=5, batch_size=4)
    compiled = recommend(model, prompts, space, trie, beam=8, top_k=5, batch_size=4, compile=True)
    assert np.array_equal(eager, compiled)


@pytest.mark.parametrize("model_kind", ["tiny", "prompted"])
def test_trie_softmax_beam_search_equals_brute_force_over_a_catalogue(
    tiny_lora, local_checkpoint, model_kind
):
    """With model.item_softmax: trie, an ID's score is the sum over its levels of the log-softmax among the
    codes that continue its prefix in the catalogue (EOS over the vocabulary), by full forward passes."""
    model, space, index = tiny_lora if model_kind == "tiny" else _prompted(local_checkpoint)
    space.item_softmax = "trie"
    known = np.arange(0, index.n_sids, 2)  # half the IDs: the restriction depends on the catalogue
    codes = index.sid_codes[known]
    trie = Trie(codes, index.level_sizes, known)
    children: dict[tuple, set] = {}
    for row in codes.tolist():
        for d in range(len(row)):
            children.setdefault(tuple(row[:d]), set()).add(row[d])
    rng = np.random.default_rng(3)
    prompts = [space.prompt(rng.integers(0, len(index.items), int(rng.integers(1, 6)))) for _ in range(3)]
    k = 10
    sids, scores = beam_search_batch(model, prompts, space, trie, beam=len(known), top_k=k)
    for r, prompt in enumerate(prompts):
        exact = []
        for row in codes.tolist():
            target = space.target(int(np.flatnonzero((index.codes == row).all(1))[0]))
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt + target])).logits[0, len(prompt) - 1 :].float()
            total = 0.0
            for d in range(len(row)):
                allowed = [space.level_offsets[d] + x for x in sorted(children[tuple(row[:d])])]
                total += (logits[d, target[d]] - torch.logsumexp(logits[d, allowed], 0)).item()
            if space.append_eos:
                total += torch.log_softmax(logits[len(row)], -1)[space.eos_id].item()
            exact.append(total)
        best = torch.topk(torch.tensor(exact), k)
        assert sids[r].tolist() == known[best.indices.numpy()].tolist()
        assert torch.allclose(scores[r], best.values, atol=1e-4)
