"""Packed training examples: a block's targets in few tokens, each target still seeing exactly the context
it sees alone (its last `history` items, plus the prompt), so the loss equals the per-example loss.

Why segments and not one pass per user: past the first layer, a history item's hidden state depends on
the items before it, so two targets can share a pass only if their windows start at the same item. A
user's first `history` targets all have windows starting at item 0 (windows are prefixes), so they share
one *prefix segment*; every later target has a window of its own and gets a one-target segment. Whatever a
mask does, deeper models leave no other exact sharing (and RoPE distances to the prompt pin it further).

Bare item tokens (`tiny`): a target's tokens follow its history in the stream, a plain causal mask is exact.
Prompted models put text after the history and EOS after the target, so each target gets a *branch*
(suffix + target + EOS) after the stream that sees the prompt prefix, its own history items and itself
(a tree mask), with position ids continuing from its last history item, as in its own prompt.

`share=False` gives one segment per target: the usual per-example batch, for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from peso.data.samples import BlockSamples
from peso.inputs import TokenSpace, attention_mask, mask_dtype
from peso.tokenize.trie import Trie

IGNORE = -100


@dataclass
class Segment:
    ids: np.ndarray  # (T,) token ids
    pos: np.ndarray  # (T,) position ids
    hi: np.ndarray  # (T,) stream keys j < hi are visible (stream tokens: i + 1, causal)
    branch: np.ndarray  # (T,) keys branch <= j <= i are visible too (own branch; stream tokens: i + 1)
    labels: np.ndarray  # (T,) the next token where a loss is taken, IGNORE elsewhere
    targets: int
    items: np.ndarray | None = None  # (T,) the target item whose token `labels` holds, -1 elsewhere


MASKED = -1e4  # a logit outside the trie: exp() is 0 in float32, yet KL terms stay finite (0 * finite)


@dataclass
class Step:
    """A forward pass over a packed batch: its model inputs, and logits (before temperature) at the
    positions that predict target tokens, with those tokens. Strategies' extra losses may use it."""

    inputs: dict[str, torch.Tensor]
    logits: torch.Tensor  # (target tokens, vocab), already `restrict`ed
    labels: torch.Tensor  # (target tokens,)
    allowed: torch.Tensor | None = None  # (target tokens, vocab) under `model.item_softmax: trie`

    def restrict(self, logits: torch.Tensor) -> torch.Tensor:
        """Other logits at these positions (a reference model's) normalised as the step's are."""
        return logits if self.allowed is None else logits.masked_fill(~self.allowed, MASKED)


@dataclass(frozen=True)
class TrieSoftmax:
    """`model.item_softmax: trie` in training: an item token's logits are restricted to the codes that
    continue its target's prefix in the catalogue's trie, so the loss is the item's own log-likelihood
    among the catalogue, the distribution the trie-constrained ranking reads. Other tokens (EOS) keep the
    whole vocabulary."""

    trie: Trie
    codes: np.ndarray  # (n_items, levels): each item's codes
    level_offsets: list[int]
    level_sizes: list[int]

    def allowed(self, labels: torch.Tensor, items: torch.Tensor, vocab: int) -> torch.Tensor:
        """(len(labels), vocab): the tokens each target token is normalised over."""
        device = labels.device
        allowed = torch.ones(len(labels), vocab, dtype=torch.bool, device=device)
        codes = torch.from_numpy(self.codes).to(device)[items.clamp(min=0)]
        node = torch.zeros(len(labels), dtype=torch.long, device=device)  # every prefix starts at the root
        trie = self.trie.to(device)
        for d, (off, size) in enumerate(zip(self.level_offsets, self.level_sizes, strict=True)):
            at = (items >= 0) & (labels >= off) & (labels < off + size)
            if at.any():
                rows = torch.zeros(int(at.sum()), vocab, dtype=torch.bool, device=device)
                rows[:, off : off + size] = trie.mask(d, node[at])
                allowed[at] = rows
            if d + 1 < len(self.level_sizes):
                node = trie.step(d, node, codes[:, d])
        allowed[torch.arange(len(labels), device=device), labels] = True  # never an infinite loss
        return allowed


@dataclass
class Packed:
    segments: list[Segment]
    causal: bool  # no branches: a causal mask with right padding is the whole story
    pad_id: int
    softmax: TrieSoftmax | None = None  # `model.item_softmax: trie`; None: the whole vocabulary

    def __len__(self) -> int:
        return len(self.segments)

    @property
    def targets(self) -> np.ndarray:
        return np.array([s.targets for s in self.segments], dtype=np.int64)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s.ids) for s in self.segments], dtype=np.int64)

    def batch(
        self, rows: np.ndarray, device: torch.device | str = "cpu", float_mask: torch.dtype | None = None
    ) -> dict:
        """Model inputs of `rows`, right-padded, with `labels` (IGNORE outside loss positions). A tree mask
        is boolean (SDPA's own format) unless `float_mask` asks for an additive one (eager attention)."""
        segs = [self.segments[r] for r in rows]
        width = max(len(s.ids) for s in segs)
        ids = np.full((len(segs), width), self.pad_id, dtype=np.int64)
        pos = np.zeros((len(segs), width), dtype=np.int64)
        labels = np.full((len(segs), width), IGNORE, dtype=np.int64)
        items = np.full((len(segs), width), -1, dtype=np.int64)
        hi = np.zeros((len(segs), width), dtype=np.int64)
        branch = np.tile(np.arange(width), (len(segs), 1))  # padding sees itself only (no empty rows)
        for r, s in enumerate(segs):
            n = len(s.ids)
            ids[r, :n], pos[r, :n], labels[r, :n], hi[r, :n], branch[r, :n] = (
                s.ids,
                s.pos,
                s.labels,
                s.hi,
                s.branch,
            )
            if s.items is not None:
                items[r, :n] = s.items
        out = {
            "input_ids": torch.from_numpy(ids).to(device),
            "position_ids": torch.from_numpy(pos).to(device),
            "labels": torch.from_numpy(labels).to(device),
            "label_items": torch.from_numpy(items).to(device),
        }
        if self.causal:
            out["attention_mask"] = torch.from_numpy(hi > 0).long().to(device)
        else:
            j = torch.arange(width, device=device)
            hi_t, br_t = torch.from_numpy(hi).to(device), torch.from_numpy(branch).to(device)
            i = j.view(1, -1, 1)
            see = ((j < hi_t.unsqueeze(-1)) | ((j >= br_t.unsqueeze(-1)) & (j <= i))).unsqueeze(1)
            out["attention_mask"] = attention_mask(see, float_mask)
        return out


def forward_targets(model: torch.nn.Module, packed: Packed, rows: np.ndarray, autocast: bool = False) -> Step:
    """One forward pass over segments `rows`, with logits only where a target token is predicted (the LM
    head over the vocabulary is the costly part)."""
    device = next(model.parameters()).device
    inputs = packed.batch(rows, device, mask_dtype(model))
    labels, items = inputs.pop("labels"), inputs.pop("label_items")
    keep = inputs["logits_to_keep"] = labels != IGNORE
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(**inputs).logits
    step = Step(inputs, logits, labels[keep])
    if packed.softmax is not None:
        step.allowed = packed.softmax.allowed(step.labels, items[keep], logits.shape[-1])
        step.logits = step.restrict(logits)
    return step


def concat(parts: list[Packed]) -> Packed:
    """The segments of several blocks as one training set (`retrain`), over the last block's catalogue."""
    return Packed(
        [s for p in parts for s in p.segments],
        all(p.causal for p in parts),
        parts[0].pad_id,
        parts[-1].softmax,
    )


def _segment(space: TokenSpace, seq: np.ndarray, a: int, targets: list[int], in_stream: bool) -> Segment:
    """Items a.. of `seq` as a stream after the prompt prefix, with the loss of `targets` (positions > a)."""
    last = max(targets) if in_stream else max(targets) - 1  # branches need the stream up to p - 1 only
    ids, start, end = list(space.prefix), {}, {a - 1: len(space.prefix)}  # a target at 0 follows the prefix
    for j in range(a, last + 1):
        if j > a:
            ids.extend(space.separator)
        start[j] = len(ids)
        ids.extend(space.item_tokens(int(seq[j])))
        end[j] = len(ids)
    n = len(ids)
    pos = list(range(n))
    hi = list(range(1, n + 1))
    branch = list(range(1, n + 1))
    labels, items = [IGNORE] * n, [-1] * n
    for p in targets:
        tgt = space.target(int(seq[p]))
        if in_stream:  # the token before each target token predicts it
            for k, tok in enumerate(tgt):
                labels[start[p] - 1 + k], items[start[p] - 1 + k] = tok, int(seq[p])
            continue
        b0, tail = len(ids), space.suffix + tgt
        ids.extend(tail)
        pos.extend(range(end[p - 1], end[p - 1] + len(tail)))
        hi.extend([end[p - 1]] * len(tail))
        branch.extend([b0] * len(tail))
        labels.extend([IGNORE] * len(tail))
        items.extend([-1] * len(tail))
        # tail[k] is predicted by the token before it: the last history token, then the branch's own
        pred = [end[p - 1] - 1, *range(b0, b0 + len(tail) - 1)]
        for k in range(len(space.suffix), len(tail)):
            labels[pred[k]], items[pred[k]] = tail[k], int(seq[p])
    a64 = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return Segment(a64(ids), a64(pos), a64(hi), a64(branch), a64(labels), len(targets), a64(items))


def item_softmax(space: TokenSpace, trie: Trie | None) -> TrieSoftmax | None:
    """What a pack's item tokens are normalised over under `space.item_softmax`, with `trie` the block's
    catalogue (None: the whole vocabulary)."""
    if space.item_softmax == "vocab":
        return None
    if trie is None:
        raise ValueError("item_softmax 'trie' packs need the block's trie")
    return TrieSoftmax(trie, np.asarray(space.codes), space.level_offsets, space.level_sizes)


def normalised(packed: Packed, space: TokenSpace, trie: Trie | None) -> Packed:
    """`packed`'s segments under `space.item_softmax` (a block trained with another softmax than the pack's:
    train.continual_item_softmax); segments record their target items either way."""
    return replace(packed, softmax=item_softmax(space, trie))


def pack(
    samples: BlockSamples, space: TokenSpace, split: str, share: bool = True, trie: Trie | None = None
) -> Packed:
    """The targets of a split ('train', 'valid', 'test') as segments; `share=False`: one per target. `trie`:
    the block's catalogue, which `model.item_softmax: trie` normalises item tokens over."""
    in_stream = not space.suffix and not space.separator and not space.append_eos
    softmax = item_softmax(space, trie)
    W = samples.history
    segments = []
    if not share:
        for u, p in samples.examples(split):
            segments.append(_segment(space, samples.sequences[u], max(0, p - W), [p], in_stream))
        return Packed(segments, causal=in_stream, pad_id=space.pad_id, softmax=softmax)
    for u in range(len(samples)):
        seq = samples.sequences[u]
        if split == "train":
            ps = list(samples.train_positions(u))
        else:
            ps = [samples.valid_position(u) if split == "valid" else samples.test_position(u)]
        early = [p for p in ps if p <= W]
        if early:  # windows that start at item 0: one prefix segment
            segments.append(_segment(space, seq, 0, early, in_stream))
        segments.extend(_segment(space, seq, p - W, [p], in_stream) for p in ps if p > W)
    return Packed(segments, causal=in_stream, pad_id=space.pad_id, softmax=softmax)
