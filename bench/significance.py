"""Is one set of timings slower than another? The tests ``bench compare`` rests on.

Two separate runs give two independent samples:

- ``mann_whitney``: the Mann–Whitney U test (two-sided), with the normal approximation
  and its tie correction: no assumption about the shape of the timings' distribution,
  which on a shared machine is skewed and often bimodal. scipy is not a dependency; the
  formula is that of ``scipy.stats.mannwhitneyu(method="asymptotic")``.
- ``ratio_ci``: a percentile bootstrap confidence interval of the ratio of medians
  (candidate / baseline), seeded so that the same samples always give the same interval.

An interleaved run gives pairs: round i timed a block of the baseline and, right beside
it, a block of the candidate, so both saw the machine in the same state. The ratio of a
pair, ``cand_i / base_i``, cancels the drift and the bursts of load the two blocks share,
which two independent samples cannot (measured here: blocks of one call flip between
about 1.1 and 3.3 ms as the shared CPU comes and goes, a spread far above a 10% threshold,
while the two blocks of a round mostly agree). So:

- ``wilcoxon_signed_rank``: the Wilcoxon signed-rank test (two-sided) on the pairs'
  log-ratios, "they are symmetric about 0" (no difference); the normal approximation
  with the tie correction and a continuity correction, zeros dropped: the formula of
  ``scipy.stats.wilcoxon(d, zero_method="wilcox", correction=True, method="approx")``.
  Symmetry under no difference holds by design: the rounds alternate the order (A B,
  B A), so whatever the second block of a round gains or loses falls on each side alike.
- ``paired_ratio`` and ``paired_ratio_ci``: the ratio that goes with that test, its
  Hodges–Lehmann estimate (the median of the Walsh averages (d_i + d_j) / 2, i <= j, of
  the log-ratios d; a "pseudo-median" of the pairs' ratios) and its distribution-free
  interval: the Walsh averages ranked C-th from either end, C from the signed-rank
  statistic's normal approximation (Hollander & Wolfe; R's ``wilcox.test(conf.int=TRUE)``
  for large samples). The interval holds exactly the shifts the test would not reject, so
  test and interval always agree, and under the heavy-tailed noise of a shared machine it
  is narrower than a bootstrap of the median (measured on A/A rounds here: 0.93-1.11
  against 0.93-1.14 at 160 rounds).
"""

from __future__ import annotations

import math
import statistics

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


def _log_ratios(base, cand) -> np.ndarray:
    a, b = np.asarray(base, dtype=float), np.asarray(cand, dtype=float)
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"paired samples: one candidate time per baseline time, got {len(a)} and {len(b)}")
    return np.log(b / a)


def wilcoxon_signed_rank(base, cand) -> tuple[float, float]:
    """(W+, two-sided p) for "the candidate/baseline log-ratios of the pairs are symmetric
    about 0". W+ sums the ranks of |log-ratio| (ties share their mean rank) over the pairs
    where the candidate was slower; pairs that read exactly equal are dropped."""
    d = _log_ratios(base, cand)
    d = d[d != 0]
    n = len(d)
    if n == 0:  # every pair equal: no evidence of a difference
        return 0.0, 1.0
    ranks, ties = _ranks(np.abs(d))
    w_plus = float(ranks[d > 0].sum())
    mean = n * (n + 1) / 4
    variance = (n * (n + 1) * (2 * n + 1) - 0.5 * float(np.sum(ties ** 3 - ties))) / 24
    if variance <= 0:
        return w_plus, 1.0
    z = (abs(w_plus - mean) - 0.5) / math.sqrt(variance)
    return w_plus, min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


def _walsh_averages(d: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(len(d))
    return np.sort((d[i] + d[j]) / 2)


def paired_ratio(base, cand) -> float:
    """The Hodges–Lehmann estimate of cand / base over the pairs."""
    return float(np.exp(np.median(_walsh_averages(_log_ratios(base, cand)))))


def paired_ratio_ci(base, cand, *, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The distribution-free interval of ``paired_ratio`` at ``confidence``."""
    d = _log_ratios(base, cand)
    walsh = _walsh_averages(d)
    n = len(d)
    z = statistics.NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    # C-th smallest and C-th largest (1-based): floor keeps the interval on the wide side.
    c = max(1, math.floor(n * (n + 1) / 4 - z * math.sqrt(n * (n + 1) * (2 * n + 1) / 24)))
    return float(np.exp(walsh[c - 1])), float(np.exp(walsh[len(walsh) - c]))
