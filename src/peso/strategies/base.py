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


class StandaloneMethod(Method):
    """A recommender without the LLM: fit on a block's training targets, rank semantic-ID groups."""

    uses_backbone = False

    def fit_block(self, train_sids: np.ndarray, n_sids: int) -> None:
        raise NotImplementedError

    def rank(self, n_users: int, k: int) -> np.ndarray:
        """(n_users, k) semantic-ID groups, best first."""
        raise NotImplementedError
