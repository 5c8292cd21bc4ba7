"""Hit@K / NDCG@K on hand-made rankings, against hand computations."""

import math

import numpy as np
import pytest

from peso.metrics import METRICS, per_user, summarize, target_ranks

# five users, top-10 lists; target 100 at rank 1, 3, 7, absent, and 2 in a list padded with -1
RANKED = np.array(
    [
        [100, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 2, 100, 3, 4, 5, 6, 7, 8, 9],
        [1, 2, 3, 4, 5, 6, 100, 7, 8, 9],
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        [5, 100, -1, -1, -1, -1, -1, -1, -1, -1],
    ]
)
TARGETS = np.array([100, 100, 100, 100, 100])

EXPECTED = {  # per user, by hand: ndcg = 1 / log2(rank + 1)
    "hit@1": [1, 0, 0, 0, 0],
    "hit@5": [1, 1, 0, 0, 1],
    "hit@10": [1, 1, 1, 0, 1],
    "ndcg@5": [1.0, 0.5, 0.0, 0.0, 1 / math.log2(3)],
    "ndcg@10": [1.0, 0.5, 1 / 3, 0.0, 1 / math.log2(3)],
}


def test_target_ranks():
    assert target_ranks(RANKED, TARGETS).tolist() == [1, 3, 7, 0, 2]


def test_target_ranks_first_occurrence_and_last_position():
    ranked = np.array([[4, 7, 7], [1, 2, 9]])
    assert target_ranks(ranked, np.array([7, 9])).tolist() == [2, 3]


def test_per_user_matches_hand_computation():
    out = per_user(RANKED, TARGETS)
    assert set(out) == set(METRICS) == set(EXPECTED)
    for m, want in EXPECTED.items():
        np.testing.assert_allclose(out[m], want, rtol=0, atol=1e-12, err_msg=m)
        assert out[m].shape == (5,)


def test_known_ndcg_values():
    out = per_user(RANKED[1:3], TARGETS[1:3])
    assert out["ndcg@10"][0] == pytest.approx(0.5)  # rank 3: 1/log2(4)
    assert out["ndcg@10"][1] == pytest.approx(1 / 3)  # rank 7: 1/log2(8)
    assert out["ndcg@5"][1] == 0.0  # rank 7 is beyond 5


def test_rank_boundaries():
    # rank exactly 5 counts for @5, rank 6 does not; rank 10 counts for @10
    ranked = np.arange(10)[None, :].repeat(3, axis=0)
    targets = np.array([4, 5, 9])
    out = per_user(ranked, targets)
    assert out["hit@5"].tolist() == [1, 0, 0]
    assert out["hit@10"].tolist() == [1, 1, 1]
    np.testing.assert_allclose(out["ndcg@5"], [1 / math.log2(6), 0, 0])
    np.testing.assert_allclose(out["ndcg@10"], [1 / math.log2(6), 1 / math.log2(7), 1 / math.log2(11)])


def test_padding_is_never_a_hit():
    ranked = np.array([[3, -1, -1, -1, -1, -1, -1, -1, -1, -1]])
    out = per_user(ranked, np.array([4]))
    assert all(out[m].tolist() == [0.0] for m in METRICS)
    assert target_ranks(ranked, np.array([4])).tolist() == [0]


def test_summarize_is_the_mean_over_users():
    s = summarize(RANKED, TARGETS)
    assert list(s) == METRICS
    assert all(isinstance(v, float) for v in s.values())
    for m, want in EXPECTED.items():
        assert s[m] == pytest.approx(sum(want) / 5), m
    assert s["hit@10"] == pytest.approx(0.8)
    assert s["ndcg@10"] == pytest.approx((1 + 0.5 + 1 / 3 + 0 + 1 / math.log2(3)) / 5)


def test_metrics_are_monotone_in_k():
    rng = np.random.default_rng(0)
    ranked = np.stack([rng.permutation(30)[:10] for _ in range(50)])
    targets = rng.integers(0, 30, size=50)
    s = summarize(ranked, targets)
    assert s["hit@1"] <= s["hit@5"] <= s["hit@10"]
    assert s["ndcg@5"] <= s["ndcg@10"] <= s["hit@10"]
    assert s["ndcg@5"] <= s["hit@5"]
    # brute force per user
    out = per_user(ranked, targets)
    for u in range(50):
        row = ranked[u].tolist()
        r = row.index(targets[u]) + 1 if targets[u] in row else 0
        assert out["hit@10"][u] == float(r > 0)
        assert out["ndcg@10"][u] == pytest.approx(1 / math.log2(r + 1) if r else 0.0)


def test_empty_targets_give_nan():
    s = summarize(np.zeros((0, 10), dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert list(s) == METRICS
    assert all(math.isnan(v) for v in s.values())


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="2 ranked lists for 3 targets"):
        per_user(RANKED[:2], TARGETS[:3])
