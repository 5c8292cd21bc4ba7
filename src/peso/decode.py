"""Decoding stage: trie-constrained beam search over semantic IDs, all users and beams of a batch at once.

Scores are sums of log-softmax over the full vocabulary (as `generate` computes them), restricted at each
step to the codes that continue a real item's ID, so no non-existent item can be emitted; with
`model.item_softmax: trie`, each step's log-softmax is over those codes alone, as training normalised it.
For prompted models, whose response ends with EOS, the score includes log p(EOS | ID), the last step
`generate` takes. One forward pass per level, one token per beam: beams share their user's cached prompt
through a tree mask instead of each holding a copy of it (users x beams x prompt length, copied again
whenever beams reorder).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList

from peso.inputs import TokenSpace, attention_mask, left_pad, mask_dtype, position_ids
from peso.model import merged
from peso.progress import bar
from peso.tokenize.trie import Trie


@torch.no_grad()
def beam_search_batch(
    model: torch.nn.Module, prompts: list[list[int]], space: TokenSpace, trie: Trie, beam: int, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(len(prompts), top_k) semantic-ID groups and their log-probabilities, best first (-1 / -inf: none)."""
    n = len(prompts)
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, space.pad_id)
    ids, mask = ids.to(device), mask.to(device)
    trie = trie.to(device)
    pos = position_ids(mask)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    cache, width = out.cache, ids.shape[1]
    prompt_keys = mask.bool().unsqueeze(1)  # (n, 1, P): what every beam token sees of its user's prompt
    float_mask = mask_dtype(model)
    logits = out.logits  # (n, beams so far, vocab)
    node = torch.zeros(n, 1, dtype=torch.long, device=device)  # every user starts at the root
    scores = torch.zeros(n, 1, device=device)
    # Beams live along the sequence, not the batch: each step appends every beam's newest token to its
    # user's cache, seeing the prompt and its own ancestors (a tree mask). Nothing is copied per beam, and a
    # step costs one token per beam. `ancestors[u, b, s]`: beam b of user u sees appended token s.
    ancestors = torch.zeros(n, 1, 0, dtype=torch.bool, device=device)
    for depth in range(trie.levels):
        size, off = trie.level_sizes[depth], space.level_offsets[depth]
        width_b = node.shape[1]
        valid = trie.mask(depth, node.flatten()).view(n, width_b, size)
        if space.item_softmax == "trie":  # normalised over the valid codes, as the model was trained
            logp = F.log_softmax(logits[..., off : off + size].float().masked_fill(~valid, float("-inf")), -1)
        else:
            logp = F.log_softmax(logits.float(), dim=-1)[..., off : off + size]
        logp = logp.masked_fill(~valid, float("-inf"))  # (trie: a dead beam's all -inf row is NaN before)
        k = min(beam, width_b * size)
        scores, flat = (scores.unsqueeze(-1) + logp).view(n, -1).topk(k, dim=-1)  # (n, k)
        parent, code = flat // size, flat % size
        node = trie.step(depth, node.gather(1, parent).flatten(), code.flatten()).view(n, k)
        node = torch.where(torch.isfinite(scores), node, torch.full_like(node, -1))
        if depth == trie.levels - 1 and not space.append_eos:
            break
        inherited = ancestors.gather(1, parent.unsqueeze(-1).expand(-1, -1, ancestors.shape[-1]))
        own = torch.eye(k, dtype=torch.bool, device=device).expand(n, -1, -1)
        ancestors = torch.cat([inherited, own], dim=-1)
        see = torch.cat([prompt_keys.expand(n, k, width), ancestors], dim=-1).unsqueeze(1)
        out = model(
            input_ids=code + off,
            attention_mask=attention_mask(see, float_mask),
            position_ids=(pos[:, -1:] + 1 + depth).expand(n, k),
            cache=cache,
            use_cache=True,
        )
        logits = out.logits
    if space.append_eos:  # the ID's last token was fed above: add its EOS step and rank again
        scores = scores + F.log_softmax(logits.float(), dim=-1)[..., space.eos_id]
        scores, order = scores.sort(dim=-1, descending=True, stable=True)
        node = node.gather(1, order)
    sids, scores = node[:, :top_k], scores[:, :top_k]
    if sids.shape[1] < top_k:  # fewer valid IDs than top_k
        pad = top_k - sids.shape[1]
        sids = F.pad(sids, (0, pad), value=-1)
        scores = F.pad(scores, (0, pad), value=float("-inf"))
    return sids.cpu(), scores.cpu()


def recommend(
    model: torch.nn.Module,
    prompts: list[list[int]],
    space: TokenSpace,
    trie: Trie,
    beam: int,
    top_k: int,
    batch_size: int,
    desc: str = "decode",
    merge: bool = True,
    compile: bool = False,
) -> np.ndarray:
    """Top-k semantic-ID groups for every prompt, (len(prompts), top_k), -1 where fewer exist. `merge`:
    LoRA folded into the weights meanwhile (`peso.model.merged`); `compile`: the forward through
    torch.compile (inductor)."""
    model.eval()
    forward = torch.compile(model, dynamic=True) if compile else model  # same parameters, merged or not
    out = np.full((len(prompts), top_k), -1, dtype=np.int64)
    # similar lengths together: less padding
    order = np.argsort([len(p) for p in prompts], kind="stable")
    with merged(model) if merge else nullcontext(model):
        for start in bar(range(0, len(prompts), batch_size), desc):
            rows = order[start : start + batch_size]
            sids, _ = beam_search_batch(forward, [prompts[r] for r in rows], space, trie, beam, top_k)
            out[rows] = sids.cpu().numpy()
    return out


@torch.no_grad()
def brute_force_scores(
    model: torch.nn.Module, prompt: list[int], space: TokenSpace, sid_codes: np.ndarray, chunk: int = 4096
) -> torch.Tensor:
    """Log-probability of every semantic ID for one prompt, by teacher forcing each full ID: the exact
    ranking that beam search approximates under `model.item_softmax: vocab` (the vocabulary's softmax).
    The prompt runs once; its cache is copied per chunk of IDs."""
    model.eval()
    out = model(input_ids=torch.tensor([prompt]), use_cache=True)
    first = F.log_softmax(out.logits[0, -1].float(), dim=-1)
    offsets = torch.tensor(space.level_offsets)
    tokens = torch.from_numpy(np.asarray(sid_codes, dtype=np.int64)) + offsets  # (n, L)
    if space.append_eos:  # the response's EOS is scored too
        tokens = torch.cat([tokens, torch.full((len(tokens), 1), space.eos_id)], dim=1)
    L, scores = tokens.shape[1], []
    for start in range(0, len(tokens), chunk):
        tok = tokens[start : start + chunk]
        total = first[tok[:, 0]]
        if L > 1:
            cache = copy.deepcopy(out.cache)
            cache.batch_repeat_interleave(len(tok))
            pos = torch.arange(len(prompt), len(prompt) + L - 1).expand(len(tok), -1)
            step = model(input_ids=tok[:, :-1], position_ids=pos, cache=cache, use_cache=True)
            logp = F.log_softmax(step.logits.float(), dim=-1)
            total = total + logp.gather(-1, tok[:, 1:].unsqueeze(-1)).squeeze(-1).sum(-1)
        scores.append(total)
    return torch.cat(scores)


def prefix_table(sid_codes: np.ndarray, space: TokenSpace) -> dict[tuple[int, ...], list[int]]:
    """prefix (token ids) -> allowed next token ids, for a `prefix_allowed_tokens_fn`: the item IDs' tokens,
    then EOS for prompted models."""
    table: dict[tuple[int, ...], set[int]] = {}
    for row in sid_codes:
        toks = [off + int(c) for off, c in zip(space.level_offsets, row, strict=True)]
        if space.append_eos:
            toks.append(space.eos_id)
        for d in range(len(toks)):
            table.setdefault(tuple(toks[:d]), set()).add(toks[d])
    return {k: sorted(v) for k, v in table.items()}


class TrieRenormalise(LogitsProcessor):
    """A `generate` logits processor for `model.item_softmax: trie`: after the prefix mask, each of the ID's
    `levels` tokens is renormalised over the allowed codes (log_softmax of the masked log-probabilities);
    the tokens after them (EOS) keep the vocabulary's, as `beam_search_batch` scores them."""

    def __init__(self, prompt_width: int, levels: int) -> None:
        self.prompt_width, self.levels = prompt_width, levels

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] - self.prompt_width < self.levels:
            return F.log_softmax(scores, dim=-1)
        return scores


def generate_reference(
    model: torch.nn.Module,
    prompts: list[list[int]],
    space: TokenSpace,
    trie: Trie,
    beam: int,
    top_k: int,
    batch_size: int,
    table: dict[tuple[int, ...], list[int]] | None = None,
) -> np.ndarray:
    """Top-k semantic-ID groups through `model.generate(num_beams=..., prefix_allowed_tokens_fn=...)`, the
    usual way, batched and ordered as `recommend` is: the reference our beam search is checked against."""
    table = table if table is not None else prefix_table(trie.codes, space)
    levels = trie.levels + int(space.append_eos)
    out = np.full((len(prompts), top_k), -1, dtype=np.int64)
    order = np.argsort([len(p) for p in prompts], kind="stable")
    offsets = torch.tensor(space.level_offsets)
    for start in range(0, len(prompts), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = left_pad([prompts[r] for r in rows], space.pad_id)
        width = ids.shape[1]

        def allowed(_batch_id: int, seq: torch.Tensor, width: int = width) -> list[int]:
            return table.get(tuple(seq[width:].tolist()), [])

        with torch.no_grad():
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                num_beams=beam,
                num_return_sequences=top_k,
                max_new_tokens=levels,
                min_new_tokens=trie.levels,
                prefix_allowed_tokens_fn=allowed,
                logits_processor=LogitsProcessorList(
                    [TrieRenormalise(width, trie.levels)] if space.item_softmax == "trie" else []
                ),
                do_sample=False,
                length_penalty=0.0,
                early_stopping=True,
                pad_token_id=space.pad_id,
                eos_token_id=space.eos_id,
            )
        codes = gen[:, width : width + trie.levels] - offsets  # (rows * top_k, levels)
        node = torch.zeros(len(codes), dtype=torch.long)
        for d in range(trie.levels):
            node = trie.step(d, node, codes[:, d])
        out[rows] = node.view(len(rows), top_k).numpy()
    return out
