"""The strategy interface and registry.

A method is either an *adapter strategy* (adapts the shared LLM block by block; hooks below, in the spirit
of PEFT's LoRA variants) or a *standalone* recommender that needs no backbone (e.g. `popular`). Methods are
registered by name and chosen with `methods: [...]` in the config.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from peso.config import RunConfig
from peso.data.samples import BlockSamples
from peso.errors import PesoError
from peso.pack import Packed, Step

REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if cls.name in REGISTRY:
        raise ValueError(f"method {cls.name} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def create(name: str, cfg: RunConfig) -> Method:
    if name not in REGISTRY:
        raise PesoError("methods", f"unknown method '{name}'", f"choose from {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](cfg)


def save_adapter(model: torch.nn.Module, out_dir: Path) -> int:
    """The adapter in PEFT's own format (adapter_config.json + adapter_model.safetensors)."""
    # the item rows travel as PEFT trainable-token deltas; without this PEFT would also copy the whole
    # (resized) embedding matrices into every block's adapter: ~500 MB each for a 1B model
    model.save_pretrained(out_dir, save_embedding_layers=False)
    return sum(f.stat().st_size for f in out_dir.iterdir() if f.suffix == ".safetensors")


@dataclass
class BlockData:
    """The training data a strategy may look at when a block starts: this block's and the previous one's."""

    current: Packed
    previous: Packed
    batch_size: int  # targets per batch

    def batches(self, which: str = "current", max_targets: int | None = None) -> Iterator[np.ndarray]:
        """Segment rows of `which` ('current' / 'previous') in batches, in order, up to `max_targets`."""
        packed = self.current if which == "current" else self.previous
        before = np.cumsum(packed.targets) - packed.targets  # targets ahead of each segment
        rows = np.arange(len(packed))
        if max_targets is not None:
            rows = rows[before < max_targets]
        yield from np.split(rows, np.flatnonzero(np.diff(before[rows] // self.batch_size)) + 1)


class Method:
    name: ClassVar[str]
    uses_backbone: ClassVar[bool]

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg


class AdapterStrategy(Method):
    """Continual adaptation of one LoRA adapter. Block 0 is shared by all strategies of a seed."""

    uses_backbone = True
    trains: ClassVar[bool] = True  # False: evaluated with the block-0 model, never updated
    retrains: ClassVar[bool] = False  # True: the runner retrains from scratch on blocks 0..t (no hooks)

    def setup_block(self, model: torch.nn.Module, block: int, data: BlockData) -> None:
        """Before training block `block` (>= 1): take anchors, add modules, estimate a Fisher, etc."""

    def extra_loss(self, model: torch.nn.Module, step: Step) -> torch.Tensor | None:
        """A term added to the cross-entropy at every step (None: nothing). `step`: this step's inputs and
        logits, for terms in function space."""
        return None

    def end_block(self, model: torch.nn.Module, block: int) -> None:
        """After the best epoch of block `block` is restored."""

    def export(self, model: torch.nn.Module, out_dir: Path) -> int:
        """Save the adapter state after a block; returns the bytes of its weights."""
        return save_adapter(model, out_dir)

    def teardown(self, model: torch.nn.Module) -> None:
        """After the method's last block: remove whatever it added, so the next method starts clean."""


@dataclass
class Catalogue:
    """What a standalone method may know about the items."""

    sid: np.ndarray  # item index -> semantic-ID group (what evaluation scores: one group, one answer)
    n_items: int
    n_sids: int
    known: list[np.ndarray]  # per block position t: sorted item indices seen in blocks 0..t (the candidates)


def top_groups(
    scores: np.ndarray | torch.Tensor, catalogue: Catalogue, t: int, k: int, batch: int = 256
) -> np.ndarray:
    """(n_users, k) semantic-ID groups, best first, from (n_users, n_items) item scores.

    Only items known at block position t compete (as the LLM's trie); a group scores as its best item, so
    the list is the items in score order with each group kept at its first occurrence. Ties: lower group
    id first. Padded with -1 when fewer than k groups are known. Shared by every standalone model, so they
    all rank exactly as the evaluation scores (by group) and never recommend an unseen item.
    """
    scores = torch.as_tensor(scores).detach().cpu()
    if scores.ndim != 2 or scores.shape[1] != catalogue.n_items:
        raise ValueError(f"scores must be (n_users, {catalogue.n_items}), got {tuple(scores.shape)}")
    known = torch.as_tensor(catalogue.known[t], dtype=torch.long)
    groups = torch.as_tensor(catalogue.sid, dtype=torch.long)[known]
    k_eff = min(k, int(torch.unique(groups).numel()))
    out = np.full((scores.shape[0], k), -1, dtype=np.int64)
    if k_eff == 0:
        return out
    if not scores.is_floating_point():
        scores = scores.double()
    floor = torch.finfo(scores.dtype).min  # -inf / NaN items still rank, below every real score
    for lo in range(0, scores.shape[0], batch):
        s = torch.nan_to_num(scores[lo : lo + batch, known], nan=floor, posinf=None, neginf=floor)
        g = torch.full((s.shape[0], catalogue.n_sids), -torch.inf, dtype=s.dtype)  # -inf: no known item
        g.scatter_reduce_(1, groups.expand_as(s), s, "amax")
        kth = torch.topk(g, k_eff, dim=1).values[:, -1].tolist()  # the k-th best group score of each row
        g = g.numpy()
        for r, row in enumerate(g):
            cand = np.flatnonzero(row >= kth[r])  # the top k and anything tied with the k-th
            out[lo + r, :k_eff] = cand[np.lexsort((cand, -row[cand]))[:k_eff]]  # by score, ties by group id
    return out


class StandaloneMethod(Method):
    """A recommender without the LLM: fit on a block's training targets, rank semantic-ID groups over the
    items known so far (`top_groups`). The runner calls `start` once per seed, then per block position t
    `fit_block` and `rank`."""

    uses_backbone = False
    # optional, set by fit_block for results.csv: the best epoch, and the targets per epoch it trained on
    best_epoch: int | None = None
    trained_targets: int | None = None

    def start(self, seed: int, catalogue: Catalogue) -> None:
        """Before a seed's first block: reset all state, seed RNGs."""
        self.seed, self.catalogue = seed, catalogue

    def fit_block(self, t: int, s: BlockSamples) -> float | None:
        """Train on block position t's samples (train targets only: `s.examples("train")` and `s.window`);
        returns the training seconds, None if the method does not train."""
        raise NotImplementedError

    def rank(self, t: int, s: BlockSamples, k: int) -> np.ndarray:
        """(len(s), k) semantic-ID groups best first for each user's test target (history =
        `s.window(u, s.test_position(u))`), -1 padding if fewer."""
        raise NotImplementedError
