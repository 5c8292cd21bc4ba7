"""The paired bootstrap on cases with a known answer."""

import numpy as np
import pytest

from peso.compare import compare_methods, paired_bootstrap
from peso.report import markdown


def test_a_constant_difference_has_a_zero_width_interval_at_that_difference():
    rng = np.random.default_rng(0)
    a = [rng.random(50), rng.random(80)]
    iv = paired_bootstrap(a, [x - 0.1 for x in a])
    assert iv.mean == pytest.approx(0.1) and iv.low == pytest.approx(0.1) and iv.high == pytest.approx(0.1)
    assert iv.excludes_zero


def test_interval_matches_the_normal_theory_width_and_covers_the_truth_about_95_percent():
    rng = np.random.default_rng(1)
    n, mu, sd = 400, 0.02, 0.3
    covered, widths = 0, []
    for rep in range(200):
        d = rng.normal(mu, sd, n)
        iv = paired_bootstrap([d], [np.zeros(n)], n_boot=1000, seed=rep)
        covered += iv.low <= mu <= iv.high
        widths.append(iv.high - iv.low)
    assert 0.90 <= covered / 200 <= 0.99
    assert np.mean(widths) == pytest.approx(2 * 1.96 * sd / np.sqrt(n), rel=0.08)


def test_blocks_weigh_equally_and_users_are_paired():
    small, large = np.ones(10), np.zeros(1000)
    iv = paired_bootstrap([small, large], [np.zeros(10), np.zeros(1000)])
    assert iv.mean == pytest.approx(0.5)  # mean of block means, not the pooled 10 / 1010
    # pairing: a shared per-user component cancels, so a tiny real difference is resolved
    rng = np.random.default_rng(2)
    base = rng.normal(0, 1, 500)
    assert paired_bootstrap([base + 0.01], [base]).excludes_zero
    with pytest.raises(ValueError):
        paired_bootstrap([np.ones(3)], [np.ones(4)])


def test_compare_methods_averages_seeds_and_skips_block_0():
    per = {}
    for seed in (0, 1):
        for block in (0, 1, 2):
            per[("single", seed, block)] = np.zeros(20)
            per[("peso", seed, block)] = np.full(20, 0.1 * (seed + 1) if block else 5.0)
    out = compare_methods(per)
    assert set(out) == {"peso", "single"}
    assert out["peso"]["single"].mean == pytest.approx(0.15)  # seeds 0.1 and 0.2 averaged; block 0 ignored
    assert out["single"]["peso"].mean == pytest.approx(-0.15)
    rows = [
        {
            "method": m,
            "seed": 0,
            "block": b,
            "users": 20,
            "hit@1": 0.0,
            "hit@5": 0.0,
            "hit@10": 0.0,
            "ndcg@5": 0.0,
            "ndcg@10": 0.0,
            "train_seconds": 0.0,
            "best_epoch": "",
        }
        for m in ("peso", "single")
        for b in (0, 1, 2)
    ]
    text = markdown(rows, {}, out)
    assert "paired bootstrap" in text and "| peso | +0.1500 [+0.1500, +0.1500] * |" in text


def test_results_md_shows_per_block_mean_and_std_over_seeds_and_storage():
    rows = [
        {
            "method": "peso",
            "seed": sd,
            "block": b,
            "users": 5,
            "hit@1": 0.0,
            "hit@5": 0.0,
            "hit@10": 0.1 * sd + 0.01 * b,
            "ndcg@5": 0.0,
            "ndcg@10": 0.02 * (sd + 1),
            "train_seconds": 10.0 * b + sd,
            "best_epoch": "",
            "adapter_bytes": 1000 * b,
        }
        for sd in (0, 1)
        for b in (0, 1, 2)
    ]
    text = markdown(rows, {})
    # block 2: hit@10 over seeds 0.02 and 0.12 -> 0.07 ± 0.0707 (the sample standard deviation, ddof=1:
    # sqrt(2 * 0.05^2 / (2 - 1))); ndcg@10 0.02 and 0.04 -> 0.03 ± 0.0141
    assert "| peso | 0.0500 ± 0.0707 / 0.0300 ± 0.0141 | 0.0600 ± 0.0707 / 0.0300 ± 0.0141 |" in text
    assert "sample standard deviation over seeds (ddof=1)" in text
    # training time of the continual blocks: (10 + 20 + 11 + 21) / 4 = 15.5 s; block 0 (0 and 1 s) left out
    assert "0.0700 ± 0.0707 / 0.0300 ± 0.0141 | 2,000 | 15.5 |" in text
