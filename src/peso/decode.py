"""Decoding stage: trie-constrained beam search over semantic IDs, all users and beams of a batch at once.

Scores are sums of log-softmax over the full vocabulary (as `generate` computes them), restricted at each
step to the codes that continue a real item's ID, so no non-existent item can be emitted. One forward pass
per level, with the key/value cache reordered as beams move.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from peso.model import TokenSpace
from peso.tokenize.trie import Trie
from peso.train import left_pad, position_ids


@torch.no_grad()
def beam_search_batch(
    model: torch.nn.Module, prompts: list[list[int]], space: TokenSpace, trie: Trie, beam: int, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(len(prompts), top_k) semantic-ID groups and their log-probabilities, best first (-1 / -inf: none)."""
    n = len(prompts)
    ids, mask = left_pad(prompts, space.pad_id)
    pos = position_ids(mask)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    cache = out.cache
    node = torch.zeros(n, dtype=torch.long)  # every user starts at the root
    scores = torch.zeros(n)
    width = 1  # beams per user so far
    logits = out.logits[:, -1]
    for depth in range(trie.levels):
        size, off = trie.level_sizes[depth], space.level_offsets[depth]
        logp = F.log_softmax(logits.float(), dim=-1)[:, off : off + size]
        logp = logp.masked_fill(~trie.mask(depth, node), float("-inf"))
        cand = (scores.unsqueeze(-1) + logp).view(n, width * size)
        k = min(beam, width * size)
        scores, flat = cand.topk(k, dim=-1)  # (n, k)
        origin = flat // size + torch.arange(n).unsqueeze(-1) * width  # row of the parent beam
        code = flat % size
        origin, code, scores = origin.reshape(-1), code.reshape(-1), scores.reshape(-1)
        node = trie.step(depth, node[origin], code)
        node = torch.where(torch.isfinite(scores), node, torch.full_like(node, -1))
        width = k
        if depth == trie.levels - 1:
            break
        # carry the cache and the mask of each chosen beam forward, then feed the chosen code
        if depth == 0:
            cache.batch_repeat_interleave(k)
            mask = mask.repeat_interleave(k, dim=0)
            last_pos = pos[:, -1:].repeat_interleave(k, dim=0)
        else:
            cache.reorder_cache(origin)
            mask, last_pos = mask[origin], last_pos[origin]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        last_pos = last_pos + 1
        step_ids = (code + off).unsqueeze(-1)
        out = model(
            input_ids=step_ids, attention_mask=mask, position_ids=last_pos, cache=cache, use_cache=True
        )
        cache, logits = out.cache, out.logits[:, -1]
    sids = node.view(n, width)[:, :top_k]
    scores = scores.view(n, width)[:, :top_k]
    if sids.shape[1] < top_k:  # fewer valid IDs than top_k
        pad = top_k - sids.shape[1]
        sids = F.pad(sids, (0, pad), value=-1)
        scores = F.pad(scores, (0, pad), value=float("-inf"))
    return sids, scores


def recommend(
    model: torch.nn.Module,
    prompts: list[list[int]],
    space: TokenSpace,
    trie: Trie,
    beam: int,
    top_k: int,
    batch_size: int,
    desc: str = "decode",
) -> np.ndarray:
    """Top-k semantic-ID groups for every prompt, (len(prompts), top_k), -1 where fewer exist."""
    model.eval()
    out = np.full((len(prompts), top_k), -1, dtype=np.int64)
    # similar lengths together: less padding
    order = np.argsort([len(p) for p in prompts], kind="stable")
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False, mininterval=1.0):
        rows = order[start : start + batch_size]
        sids, _ = beam_search_batch(model, [prompts[r] for r in rows], space, trie, beam, top_k)
        out[rows] = sids.numpy()
    return out


@torch.no_grad()
def brute_force_scores(
    model: torch.nn.Module, prompt: list[int], space: TokenSpace, sid_codes: np.ndarray
) -> torch.Tensor:
    """Log-probability of every semantic ID for one prompt, by teacher forcing each full ID (for tests)."""
    model.eval()
    seqs = [
        prompt + [off + int(c) for off, c in zip(space.level_offsets, codes, strict=True)]
        for codes in sid_codes
    ]
    ids = torch.tensor(seqs)
    logp = F.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
    L = sid_codes.shape[1]
    tok = ids[:, -L:]
    pred = logp[:, -L - 1 : -1].gather(-1, tok.unsqueeze(-1)).squeeze(-1)
    return pred.sum(-1)
