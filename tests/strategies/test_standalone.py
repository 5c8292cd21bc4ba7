"""The standalone-method interface: `top_groups` (item scores -> semantic-ID groups) against brute force,
and `popular` through it."""

import numpy as np
import pytest
import torch

from peso.data.samples import BlockSamples
from peso.strategies import create
from peso.strategies.base import Catalogue, top_groups


def brute_force(scores: np.ndarray, cat: Catalogue, t: int, k: int) -> np.ndarray:
    """Walk the known items in (score desc, group id, item) order, keep each group's first occurrence."""
    out = np.full((len(scores), k), -1, dtype=np.int64)
    for u, row in enumerate(scores):
        items = sorted(cat.known[t], key=lambda i: (-row[i], cat.sid[i], i))
        groups: list[int] = []
        for i in items:
            if cat.sid[i] not in groups:
                groups.append(int(cat.sid[i]))
        out[u, : min(k, len(groups))] = groups[:k]
    return out


def catalogue(n_items: int, n_sids: int, seed: int) -> Catalogue:
    rng = np.random.default_rng(seed)
    sid = rng.integers(0, n_sids, size=n_items)  # many collisions: several items per group
    order = rng.permutation(n_items)
    known = [np.sort(order[: n_items // 3]), np.sort(order[: 2 * n_items // 3]), np.arange(n_items)]
    return Catalogue(sid, n_items, n_sids, known)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 5, 10])
def test_top_groups_matches_brute_force(seed, k):
    cat = catalogue(40, 15, seed)
    rng = np.random.default_rng(100 + seed)
    scores = rng.normal(size=(7, 40)).astype(np.float32)
    scores[:, ::4] = np.round(scores[:, ::4])  # ties inside and across groups
    scores[0] = 0.0  # everything tied: groups by id
    scores[1, :5] = -np.inf
    for t in range(3):
        got = top_groups(scores, cat, t, k, batch=3)  # batches of users split the rows
        np.testing.assert_array_equal(got, brute_force(scores, cat, t, k))
        # only groups of known items, each at most once
        allowed = set(cat.sid[cat.known[t]].tolist())
        for row in got:
            real = row[row >= 0]
            assert set(real.tolist()) <= allowed and len(set(real.tolist())) == len(real)
    assert (top_groups(torch.from_numpy(scores), cat, 1, k) == top_groups(scores, cat, 1, k)).all()


def test_top_groups_pads_with_minus_one_and_excludes_unknown():
    sid = np.array([0, 0, 1, 2, 3])
    cat = Catalogue(sid, 5, 4, [np.array([0, 1, 2]), np.arange(5)])
    scores = np.array([[1.0, 3.0, 2.0, 9.0, 8.0]])  # items 3 and 4 score highest but are unknown at t=0
    np.testing.assert_array_equal(top_groups(scores, cat, 0, 4), [[0, 1, -1, -1]])
    np.testing.assert_array_equal(top_groups(scores, cat, 1, 4), [[2, 3, 0, 1]])
    with pytest.raises(ValueError):
        top_groups(scores[:, :4], cat, 0, 4)


def test_popular_ranks_groups_by_training_count_ties_by_id():
    sid = np.array([0, 1, 1, 2, 3, 4])
    cat = Catalogue(sid, 6, 5, [np.array([0, 1, 2, 3, 5]), np.arange(6)])
    # one user: items 1,2 (group 1) x3, item 3 x2, item 0 x1; the last two are valid and test; position 0
    # (item 5, group 4) is a target only with empty-history targets
    seq = np.array([5, 1, 2, 1, 3, 3, 0, 4, 4])
    s = BlockSamples(0, ["u"], [seq], np.zeros(1, dtype=np.int64), 3, empty_history=False)
    m = create("popular")
    m.start(0, cat)
    assert m.fit_block(0, s) is None
    # group 4 (item 5) never a training target: count 0, still known; group 3 (item 4) unknown at t=0
    np.testing.assert_array_equal(m.rank(0, s, 5), [[1, 2, 0, 4, -1]])
    np.testing.assert_array_equal(m.rank(1, s, 5), [[1, 2, 0, 3, 4]])
    s = BlockSamples(0, ["u"], [seq], np.zeros(1, dtype=np.int64), 3)  # group 4 now counts 1, ties with 0
    m.fit_block(0, s)
    np.testing.assert_array_equal(m.rank(1, s, 5), [[1, 2, 0, 4, 3]])
