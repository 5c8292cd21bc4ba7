import numpy as np
import pytest

from peso.tokenize.quantize import (
    ResidualKMeans,
    codebook_usage,
    collision_rate,
    dedup_codes,
    semantic_ids,
    tokens_of,
)


def _clustered(n=300, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(6, dim)) * 5
    return centers[rng.integers(0, 6, n)] + rng.normal(size=(n, dim))


def test_encode_is_nearest_centroid_on_the_running_residual():
    x = _clustered()
    rq = ResidualKMeans.fit(x, levels=3, codes=8, seed=0)
    codes = rq.encode(x)
    residual = x.copy()
    for level, book in enumerate(rq.codebooks):  # brute force, one point at a time
        for i in range(len(x)):
            d = ((book - residual[i]) ** 2).sum(1)
            assert codes[i, level] == int(np.argmin(d))
        residual = residual - book[codes[:, level]]
    # each level explains more: the residual shrinks
    assert np.linalg.norm(residual) < np.linalg.norm(x - rq.codebooks[0][codes[:, 0]])


def test_dedup_numbers_items_per_prefix_and_continues_across_calls():
    first = np.array([[1, 2], [1, 2], [3, 4], [1, 2]])
    assert dedup_codes(first).tolist() == [0, 1, 0, 2]
    later = np.array([[3, 4], [1, 2], [5, 5]])
    assert dedup_codes(later, existing=first).tolist() == [1, 3, 0]


def test_ids_are_unique_deterministic_and_old_ids_never_change_when_new_items_arrive():
    x = _clustered(400)
    first_block = np.repeat([0, 1, 2, 3], 100)
    full, _ = semantic_ids(x, first_block, levels=2, codes=4, seed=3)
    assert len({tuple(r) for r in full}) == len(full)  # distinct IDs for every item
    again, _ = semantic_ids(x, first_block, levels=2, codes=4, seed=3)
    assert np.array_equal(full, again)  # deterministic for a seed
    for t in range(3):  # the system as it stood after block t
        seen = first_block <= t
        partial, _ = semantic_ids(x[seen], first_block[seen], levels=2, codes=4, seed=3)
        assert np.array_equal(partial, full[seen])


def test_codebooks_are_fitted_on_base_items_only():
    x = _clustered(200)
    first_block = np.repeat([0, 1], 100)
    _, rq = semantic_ids(x, first_block, levels=2, codes=4, seed=0)
    direct = ResidualKMeans.fit(x[:100], levels=2, codes=4, seed=0)
    for a, b in zip(rq.codebooks, direct.codebooks, strict=True):
        assert np.allclose(a, b)


def test_reports():
    prefixes = np.array([[0, 1], [0, 1], [2, 3], [4, 5]])
    assert collision_rate(prefixes) == pytest.approx(0.5)
    assert codebook_usage(prefixes, [8, 6]) == [3 / 8, 3 / 6]
    assert tokens_of(np.array([[12, 3, 0]])) == [["<a_12>", "<b_3>", "<c_0>"]]


def test_rqvae_learns_and_gives_stable_distinct_ids():
    from peso.tokenize.rqvae import RQVAE

    x = _clustered(300, dim=16)
    first_block = np.repeat([0, 1, 2], 100)
    full, model = semantic_ids(x, first_block, levels=2, codes=8, seed=1, quantizer="rqvae")
    assert model.history[-1] < 0.5 * model.history[0]  # reconstruction improves
    assert len({tuple(r) for r in full}) == len(full)
    assert np.array_equal(model.encode(x), full[:, :-1])  # the stored codes are the encoder's
    partial, _ = semantic_ids(x[:200], first_block[:200], levels=2, codes=8, seed=1, quantizer="rqvae")
    assert np.array_equal(partial, full[:200])  # old items keep their IDs when block 2 arrives
    assert isinstance(model, RQVAE)
