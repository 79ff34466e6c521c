"""Is one set of timings slower than another? The two tests ``bench compare`` rests on.

- ``mann_whitney``: the Mann–Whitney U test (two-sided), with the normal approximation
  and its tie correction: no assumption about the shape of the timings' distribution,
  which on a shared machine is skewed and often bimodal. scipy is not a dependency; the
  formula is that of ``scipy.stats.mannwhitneyu(method="asymptotic")``.
- ``ratio_ci``: a percentile bootstrap confidence interval of the ratio of medians
  (candidate / baseline), seeded so that the same samples always give the same interval.
"""

from __future__ import annotations

import math

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


def _ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based; ties share the mean of their ranks) and the tie group sizes."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, len(values)])
    mean_rank = starts + (sizes + 1) / 2.0          # ranks starts+1 .. starts+size
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, sizes)
    return ranks, sizes


def mann_whitney(base, cand) -> tuple[float, float]:
    """(U of ``cand``, two-sided p) for "the two samples come from one distribution".

    U counts the pairs (b, c) with c > b (ties count a half); the p-value uses the normal
    approximation with a continuity correction, fine from about 5 samples a side.
    """
    a, b = np.asarray(base, dtype=float), np.asarray(cand, dtype=float)
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        raise ValueError("mann_whitney: both samples need at least one value")
    ranks, ties = _ranks(np.concatenate([a, b]))
    u_cand = ranks[n1:].sum() - n2 * (n2 + 1) / 2
    n = n1 + n2
    mean = n1 * n2 / 2
    tie_term = float(np.sum(ties ** 3 - ties))
    variance = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance <= 0:  # every value equal: no evidence of a difference
        return float(u_cand), 1.0
    z = (abs(u_cand - mean) - 0.5) / math.sqrt(variance)
    return float(u_cand), min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


def ratio_ci(base, cand, *, confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
             seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of median(cand) / median(base)."""
    a, b = np.asarray(base, dtype=float), np.asarray(cand, dtype=float)
    rng = np.random.default_rng(seed)
    base_medians = np.median(a[rng.integers(0, len(a), (resamples, len(a)))], axis=1)
    cand_medians = np.median(b[rng.integers(0, len(b), (resamples, len(b)))], axis=1)
    ratios = cand_medians / base_medians
    tail = (1 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return float(low), float(high)
