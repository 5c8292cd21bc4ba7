"""Semantic IDs from item embeddings: residual k-means codebooks plus a de-duplication level.

Codebooks are fitted once, on the base block's items. Any item, old or new, is encoded by the nearest
centroid level by level on its residual; the last level numbers the items that share a prefix in arrival
order, so every item gets a distinct ID and an item's ID never changes when new items arrive.
"""

from __future__ import annotations

import numpy as np

from peso.tokenize.rkmeans import ResidualKMeans
from peso.tokenize.rqvae import RQVAE

LEVEL_NAMES = "abcdefghijklmnopqrstuvwxyz"


def dedup_codes(prefixes: np.ndarray, existing: np.ndarray | None = None) -> np.ndarray:
    """Last-level code of each new item: the next free number among items with the same prefix.

    `existing` holds the prefixes of items already numbered (in the same order they were numbered), so a
    later call continues where the earlier one stopped and never renumbers an old item.
    """
    counts: dict[tuple, int] = {}
    if existing is not None:
        for row in map(tuple, existing):
            counts[row] = counts.get(row, 0) + 1
    out = np.empty(len(prefixes), dtype=np.int64)
    for i, row in enumerate(map(tuple, prefixes)):
        out[i] = counts.get(row, 0)
        counts[row] = out[i] + 1
    return out


def collision_rate(prefixes: np.ndarray) -> float:
    """Share of items whose prefix (before de-duplication) is carried by another item too."""
    if len(prefixes) == 0:
        return 0.0
    _, inverse, counts = np.unique(prefixes, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.reshape(-1)] > 1).mean())


def most_common_prefix(prefixes: np.ndarray) -> dict:
    """How many items carry the most common prefix, and their share of the items."""
    if len(prefixes) == 0:
        return {"items": 0, "share": 0.0}
    _, counts = np.unique(prefixes, axis=0, return_counts=True)
    return {"items": int(counts.max()), "share": round(float(counts.max() / len(prefixes)), 4)}


def codebook_usage(codes: np.ndarray, sizes: list[int]) -> list[float]:
    """Per level, the share of its codes that some item uses."""
    return [len(np.unique(codes[:, level])) / size for level, size in enumerate(sizes)]


def tokens_of(codes: np.ndarray) -> list[list[str]]:
    """Token strings "<a_12>", "<b_3>", ... of each row of codes."""
    return [[f"<{LEVEL_NAMES[level]}_{int(c)}>" for level, c in enumerate(row)] for row in codes]


def semantic_ids(
    embeddings: np.ndarray,
    first_block: np.ndarray,
    levels: int = 3,
    codes: int = 256,
    seed: int = 0,
    quantizer: str = "rkmeans",
):
    """(n_items, levels + 1) codes and the fitted quantiser. Codebooks are fitted on the items of the first
    block only; the de-duplication level numbers items in arrival order (block, then input order), which is
    what assigning each later block's new items against the frozen codebooks gives, one block at a time."""
    base = first_block == first_block.min()
    if quantizer == "rqvae":
        rq = RQVAE.fit(embeddings[base], levels, codes, seed)
    else:
        rq = ResidualKMeans.fit(embeddings[base], levels, codes, seed)
    prefixes = rq.encode(embeddings)
    order = np.lexsort((np.arange(len(first_block)), first_block))
    last = np.empty(len(first_block), dtype=np.int64)
    last[order] = dedup_codes(prefixes[order])
    return np.concatenate([prefixes, last[:, None]], axis=1), rq
