"""Most frequent items among the block's training targets, the same list for every user (no model)."""

from __future__ import annotations

import numpy as np

from peso.strategies.base import StandaloneMethod, register


@register
class Popular(StandaloneMethod):
    name = "popular"

    def fit_block(self, train_sids: np.ndarray, n_sids: int) -> None:
        counts = np.bincount(train_sids, minlength=n_sids)
        self.order = np.lexsort((np.arange(n_sids), -counts))  # by count, ties by id: deterministic

    def rank(self, n_users: int, k: int) -> np.ndarray:
        return np.tile(self.order[:k], (n_users, 1))
