"""Evaluation stage: Hit@K and NDCG@K of ranked semantic-ID lists against each user's target.

Hit@K = target in the top K; NDCG@K = 1 / log2(rank + 1) if the target is at rank <= K (one relevant item).
Per-user values are kept so that later comparisons can bootstrap over users.
"""

from __future__ import annotations

import numpy as np

KS_HIT = (1, 5, 10)
KS_NDCG = (5, 10)
METRICS = [f"hit@{k}" for k in KS_HIT] + [f"ndcg@{k}" for k in KS_NDCG]


def target_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each user's target in its list, 0 where absent."""
    match = ranked == targets[:, None]
    found = match.any(axis=1)
    return np.where(found, match.argmax(axis=1) + 1, 0)


def per_user(ranked: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    if ranked.shape[0] != targets.shape[0]:
        raise ValueError(f"{ranked.shape[0]} ranked lists for {targets.shape[0]} targets")
    rank = target_ranks(ranked, targets)
    hit = rank > 0
    gain = np.where(hit, 1.0 / np.log2(rank + 1.0, where=hit, out=np.ones(rank.shape)), 0.0)
    out = {f"hit@{k}": (hit & (rank <= k)).astype(float) for k in KS_HIT}
    out.update({f"ndcg@{k}": np.where(hit & (rank <= k), gain, 0.0) for k in KS_NDCG})
    return out


def summarize(ranked: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    if len(targets) == 0:
        return {m: float("nan") for m in METRICS}
    return {m: float(v.mean()) for m, v in per_user(ranked, targets).items()}
