"""Most frequent items among the block's training targets, the same list for every user (no model)."""

from __future__ import annotations

import numpy as np

from peso.data.samples import BlockSamples
from peso.strategies.base import StandaloneMethod, register, top_groups


@register
class Popular(StandaloneMethod):
    name = "popular"

    def fit_block(self, t: int, s: BlockSamples) -> float | None:
        # counted per semantic-ID group (what evaluation scores); an item scores as its group's count, so
        # groups rank by count, ties by id (deterministic), among the groups known at t
        counts = np.bincount(self.catalogue.sid[s.train_targets()], minlength=self.catalogue.n_sids)
        self.scores = counts[self.catalogue.sid][None, :]
        return None

    def rank(self, t: int, s: BlockSamples, k: int) -> np.ndarray:
        return np.tile(top_groups(self.scores, self.catalogue, t, k)[0], (len(s), 1))
