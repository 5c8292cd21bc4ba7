"""Residual k-means: each level's codebook is fitted on the residual the levels before it leave."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans


@dataclass
class ResidualKMeans:
    codebooks: list[np.ndarray]  # per level: (codes, dim) centroids

    @classmethod
    def fit(cls, x: np.ndarray, levels: int = 3, codes: int = 256, seed: int = 0) -> ResidualKMeans:
        """Fit `levels` codebooks of `codes` centroids, each on the residual left by the levels before."""
        residual = np.asarray(x, dtype=np.float64).copy()
        books = []
        for level in range(levels):
            k = min(codes, len(np.unique(residual.round(12), axis=0)))
            km = KMeans(n_clusters=k, n_init=1, random_state=seed + level).fit(residual)
            books.append(km.cluster_centers_)
            residual = residual - km.cluster_centers_[_nearest(residual, km.cluster_centers_)]
        return cls(books)

    @property
    def levels(self) -> int:
        return len(self.codebooks)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(n, levels) codes: nearest centroid of each level on the running residual."""
        residual = np.asarray(x, dtype=np.float64).copy()
        out = np.empty((len(residual), self.levels), dtype=np.int64)
        for level, book in enumerate(self.codebooks):
            out[:, level] = _nearest(residual, book)
            residual = residual - book[out[:, level]]
        return out


def _nearest(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    # squared distances without forming (n, k, dim): |x|^2 - 2 x.c + |c|^2; ties go to the lowest code
    d = (x * x).sum(1, keepdims=True) - 2.0 * x @ centers.T + (centers * centers).sum(1)
    return d.argmin(1)
