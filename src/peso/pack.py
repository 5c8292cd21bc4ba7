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

from dataclasses import dataclass

import numpy as np
import torch

from peso.data.samples import BlockSamples
from peso.inputs import TokenSpace, attention_mask, mask_dtype

IGNORE = -100


@dataclass
class Segment:
    ids: np.ndarray  # (T,) token ids
    pos: np.ndarray  # (T,) position ids
    hi: np.ndarray  # (T,) stream keys j < hi are visible (stream tokens: i + 1, causal)
    branch: np.ndarray  # (T,) keys branch <= j <= i are visible too (own branch; stream tokens: i + 1)
    labels: np.ndarray  # (T,) the next token where a loss is taken, IGNORE elsewhere
    targets: int


@dataclass
class Step:
    """A forward pass over a packed batch: its model inputs, and logits (before temperature) at the
    positions that predict target tokens, with those tokens. Strategies' extra losses may use it."""

    inputs: dict[str, torch.Tensor]
    logits: torch.Tensor  # (target tokens, vocab)
    labels: torch.Tensor  # (target tokens,)


@dataclass
class Packed:
    segments: list[Segment]
    causal: bool  # no branches: a causal mask with right padding is the whole story
    pad_id: int

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
        out = {
            "input_ids": torch.from_numpy(ids).to(device),
            "position_ids": torch.from_numpy(pos).to(device),
            "labels": torch.from_numpy(labels).to(device),
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
    labels = inputs.pop("labels")
    inputs["logits_to_keep"] = labels != IGNORE
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(**inputs).logits
    return Step(inputs, logits, labels[inputs["logits_to_keep"]])


def concat(parts: list[Packed]) -> Packed:
    """The segments of several blocks as one training set (`retrain`)."""
    return Packed([s for p in parts for s in p.segments], all(p.causal for p in parts), parts[0].pad_id)


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
    labels = [IGNORE] * n
    for p in targets:
        tgt = space.target(int(seq[p]))
        if in_stream:  # the token before each target token predicts it
            for k, tok in enumerate(tgt):
                labels[start[p] - 1 + k] = tok
            continue
        b0, tail = len(ids), space.suffix + tgt
        ids.extend(tail)
        pos.extend(range(end[p - 1], end[p - 1] + len(tail)))
        hi.extend([end[p - 1]] * len(tail))
        branch.extend([b0] * len(tail))
        labels.extend([IGNORE] * len(tail))
        # tail[k] is predicted by the token before it: the last history token, then the branch's own
        pred = [end[p - 1] - 1, *range(b0, b0 + len(tail) - 1)]
        for k in range(len(space.suffix), len(tail)):
            labels[pred[k]] = tail[k]
    a64 = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return Segment(a64(ids), a64(pos), a64(hi), a64(branch), a64(labels), len(targets))


def pack(samples: BlockSamples, space: TokenSpace, split: str, share: bool = True) -> Packed:
    """The targets of a split ('train', 'valid', 'test') as segments; `share=False`: one per target."""
    in_stream = not space.suffix and not space.separator and not space.append_eos
    W = samples.history
    segments = []
    if not share:
        for u, p in samples.examples(split):
            segments.append(_segment(space, samples.sequences[u], max(0, p - W), [p], in_stream))
        return Packed(segments, causal=in_stream, pad_id=space.pad_id)
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
    return Packed(segments, causal=in_stream, pad_id=space.pad_id)
