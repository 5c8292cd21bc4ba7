"""Comparisons a reviewer can trust: a paired bootstrap over test users of the difference in a metric
between two methods, on the mean over continual blocks.

Both methods are scored on the same users of the same blocks, so the difference is taken per user (paired)
and users are resampled within each block (stratified), keeping each block's weight in the mean over
blocks equal, as in the results table. With several seeds, a user's difference is first averaged over
seeds: the interval is about the users, the seeds' spread is reported beside it as mean ± std.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        mark = " *" if self.excludes_zero else ""
        return f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}]{mark}"


def paired_bootstrap(
    a: list[np.ndarray],
    b: list[np.ndarray],
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Mean over blocks of mean_u (a - b), with a percentile bootstrap interval. `a[k]`, `b[k]`: per-user
    values of block k, the same users in the same order."""
    if len(a) != len(b) or not a:
        raise ValueError("need the same non-empty list of blocks for both methods")
    diffs = []
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
            raise ValueError("per-user arrays must be 1-D, non-empty and paired")
        diffs.append(x - y)
    rng = np.random.default_rng(seed)
    boot = np.zeros(n_boot)
    for d in diffs:  # resample users within each block
        boot += d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    boot /= len(diffs)
    tail = (1 - level) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    return Interval(float(np.mean([d.mean() for d in diffs])), float(low), float(high))


def compare_methods(
    per_user: dict[tuple[str, int, int], np.ndarray],
    references: tuple[str, ...] = ("single", "peso"),
    first_block: int = 1,
) -> dict[str, dict[str, Interval]]:
    """method -> reference -> interval of (method - reference) over blocks >= first_block (the continual
    ones by default), from per-user values keyed by (method, seed, block); values averaged over the seeds
    where both methods have every block (a run still going compares what it has)."""
    methods = list(dict.fromkeys(m for m, _, _ in per_user))
    blocks = sorted({b for _, _, b in per_user if b >= first_block})
    out: dict[str, dict[str, Interval]] = {}
    for method in methods:
        for ref in references:
            if ref == method or ref not in methods:
                continue
            seeds = sorted(
                s
                for s in {s for m, s, _ in per_user if m == method}
                if all((m, s, b) in per_user for m in (method, ref) for b in blocks)
            )
            if not seeds or not blocks:
                continue
            a = [np.mean([per_user[(method, s, b)] for s in seeds], axis=0) for b in blocks]
            r = [np.mean([per_user[(ref, s, b)] for s in seeds], axis=0) for b in blocks]
            out.setdefault(method, {})[ref] = paired_bootstrap(a, r)
    return out
