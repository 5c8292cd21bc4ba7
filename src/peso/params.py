"""Named sets of a model's parameters and snapshots of them: which parameters a phase trains (block 0,
the adapter), the block-0 start and end every method begins from, and the values a block state keeps."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class ParamSets:
    def __init__(self, model: torch.nn.Module, **sets: set[str]) -> None:
        self.model = model
        self.sets = dict(sets)
        self.original = {n for n, _ in model.named_parameters()}  # what a strategy adds is not in here
        self.snapshots: dict[str, dict[str, torch.Tensor]] = {}

    def values(self, which: str) -> dict[str, torch.Tensor]:
        """Detached copies of the parameters of set `which`."""
        names = self.sets[which]
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if n in names}

    def snapshot(self, name: str, which: str) -> dict[str, torch.Tensor]:
        self.snapshots[name] = self.values(which)
        return self.snapshots[name]

    def restore(self, name: str) -> None:
        self.load(self.snapshots[name])

    def load(self, values: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, v in values.items():
                params[n].copy_(v)

    def changed(self, base: str) -> dict[str, torch.Tensor]:
        """What can differ from the snapshot `base` was taken of: set `base` and every parameter a strategy
        added since the model was built (a block state keeps these)."""
        names = self.sets[base]
        return {
            n: p.detach().clone()
            for n, p in self.model.named_parameters()
            if n in names or n not in self.original
        }

    @contextmanager
    def training(self, which: str) -> Iterator[None]:
        """Only set `which` trains inside; the flags come back after."""
        flags = {n: p.requires_grad for n, p in self.model.named_parameters()}
        names = self.sets[which]
        for n, p in self.model.named_parameters():
            p.requires_grad_(n in names)
        try:
            yield
        finally:
            for n, p in self.model.named_parameters():
                p.requires_grad_(flags[n])
