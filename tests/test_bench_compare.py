"""``bench compare``'s statistics and verdicts on synthetic samples (no timing here)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attnsuite.bench import compare, significance


def samples(median, spread=0.02, n=20, seed=0):
    """``n`` values uniform within ``spread`` (a fraction) of ``median``."""
    return list(median * (1 + spread * np.random.default_rng(seed).uniform(-1, 1, n)))


def point(values, stable=True, status="ok"):
    if status != "ok":
        return {"status": status}
    return {"status": "ok", "samples_s": values, "median_s": float(np.median(values)), "stable": stable}


# --- Mann-Whitney U and the bootstrap interval ------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_mann_whitney_matches_scipy(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    a = np.round(rng.lognormal(0, 0.3, 7 + seed), 1)  # rounded: ties on purpose
    b = np.round(rng.lognormal(0.2 * (seed % 3), 0.3, 9), 1)
    u, p = significance.mann_whitney(a, b)
    expected = stats.mannwhitneyu(b, a, alternative="two-sided", method="asymptotic", use_continuity=True)
    assert u == pytest.approx(expected.statistic) and p == pytest.approx(expected.pvalue, rel=1e-9), \
        f"a={a} b={b}: ours U={u} p={p}, scipy {expected}"


def test_mann_whitney_by_hand():
    # Complete separation, 5 a side: U = 25, mean 12.5, sd sqrt(5*5*11/12) = 4.787;
    # z = (12.5 - 0.5) / 4.787 = 2.507, p = erfc(2.507 / sqrt 2) = 0.0122.
    u, p = significance.mann_whitney([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert u == 25 and p == pytest.approx(math.erfc(12 / math.sqrt(5 * 5 * 11 / 12) / math.sqrt(2)))
    assert significance.mann_whitney([3, 3, 3], [3, 3, 3]) == (4.5, 1.0)


def test_the_bootstrap_interval_is_seeded_and_holds_the_true_ratio():
    a, b = samples(1.0, seed=1), samples(2.0, seed=2)
    low, high = significance.ratio_ci(a, b)
    assert (low, high) == significance.ratio_ci(a, b), "not reproducible"
    assert low < 2.0 < high and high - low < 0.1, (low, high)


# --- verdicts ----------------------------------------------------------------------------

@pytest.mark.parametrize("base, cand, stable, verdict, reason", [
    (samples(1.0, seed=1), samples(2.0, seed=2), True, "regressed", "slower by more than 10%"),
    (samples(1.0, seed=1), samples(0.5, seed=2), True, "improved", "faster by more than 10%"),
    (samples(1.0, seed=1), samples(1.0, seed=2), True, "unchanged", "within the threshold"),
    # significant (3% slower, tight samples) but below the threshold: unchanged
    (samples(1.0, 0.005, seed=1), samples(1.03, 0.005, seed=2), True, "unchanged", "within the threshold"),
    (samples(1.0, n=3, seed=1), samples(2.0, n=3, seed=2), True, "uncertain", "few samples"),
    (None, samples(2.0, seed=2), True, "uncertain", "no raw samples in the baseline"),
    # 12% slower with 30% noise: the interval reaches both sides of 1.1
    (samples(1.0, 0.3, seed=3), samples(1.12, 0.3, seed=4), False, "uncertain", "timer unstable"),
    (samples(1.0, 0.3, seed=3), samples(1.12, 0.3, seed=4), True, "uncertain", "straddles the threshold"),
])
def test_each_verdict(base, cand, stable, verdict, reason):
    got = compare.judge(point(base or [1.0]) | ({} if base else {"samples_s": None}), point(cand, stable), 0.1)
    assert got.verdict == verdict and reason in got.reason, f"{got}"
    if got.ci:
        assert got.ci[0] <= got.ratio <= got.ci[1], got


def test_a_large_but_noisy_slowdown_is_not_a_regression():
    """Median 1.5x, but samples spread over 0.2x-2.8x of the median: not significant."""
    base, cand = samples(1.0, 0.8, n=6, seed=10), samples(1.5, 0.8, n=6, seed=11)
    got = compare.judge(point(base), point(cand), 0.1)
    assert got.verdict != "regressed", got
    assert got.p >= compare.ALPHA or got.ci[0] <= 1.1, got


@pytest.mark.parametrize("base, cand, verdict", [
    ("ok", "error", "regressed"), ("timeout", "ok", "improved"), ("oom", "oom", "unchanged")])
def test_a_point_that_stops_or_starts_being_measured(base, cand, verdict):
    values = samples(1.0)
    assert compare.judge(point(values, status=base), point(values, status=cand), 0.1).verdict == verdict


@pytest.mark.parametrize("threshold", [math.nan, math.inf, 0.0, -0.1])
def test_the_threshold_must_be_a_finite_positive_fraction(threshold):
    with pytest.raises(ValueError, match="threshold"):
        compare.judge(point(samples(1.0)), point(samples(1.0)), threshold)


def test_an_interleaved_run_pairs_baseline_and_candidate_of_one_implementation():
    key = dict(machine="m", impl="torch.fused", compile="eager", batch=1, L_q=8, L_k=8, d_model=8, heads=2,
               kv_heads=2, dtype="float32", causal=False, device="cpu")
    records = [dict(key, role=role, **{"pass": p}, **point(samples(m, seed=i)))
               for i, (role, p, m) in enumerate([("baseline", "forward", 1.0), ("candidate", "forward", 2.0),
                                                 ("baseline", "forward_backward", 1.0),
                                                 ("candidate", "forward_backward", 1.0)])]
    changes = compare.pair_up(records, 0.1)
    assert [(c.key["pass"], c.verdict.verdict) for c in changes] == [
        ("forward", "regressed"), ("forward_backward", "unchanged")]


def test_two_runs_on_an_oversubscribed_machine_are_uncertain_unless_interleaved():
    """Load 10 on 2 CPUs: a 3x slower candidate may be the load, not the code."""
    base, cand = point(samples(1.0, seed=1)), point(samples(3.0, seed=2))
    base.update(load_avg_1min=1.2, env={"cpus_usable": 2})
    cand.update(load_avg_1min=10.0, env={"cpus_usable": 2})
    got = compare.judge(base, cand, 0.1)
    assert got.verdict == "uncertain" and "load 10.0 on 2 CPUs" in got.reason, got
    assert compare.judge(base, cand, 0.1, same_session=True).verdict == "regressed"
    cand["load_avg_1min"] = 1.9
    assert compare.judge(base, cand, 0.1).verdict == "regressed"
    same = point(samples(1.0, seed=3)) | {"load_avg_1min": 10.0, "env": {"cpus_usable": 2}}
    assert compare.judge(base, same, 0.1).verdict == "unchanged", "the samples alone settle it"


@pytest.mark.parametrize("others, threads, busy", [(0.1, 1, False), (1.1, 1, False), (1.5, 1, True),
                                                    (0.5, None, True), (0.1, None, False)])
def test_contention_measured_during_the_timing_decides(others, threads, busy):
    """2 CPUs: a run capped at one thread leaves one CPU to others; an uncapped one none."""
    record = {"others_cpus": others, "load_avg_1min": 0.0, "env": {"cpus_usable": 2, "threads": threads}}
    assert (compare.oversubscribed(record) is not None) is busy


def test_holm_adjusts_for_the_number_of_points():
    # sorted 0.01, 0.02, 0.04 of 3 tested: 0.03, max(0.03, 0.04), max(0.04, 0.04); None stays
    adjusted = compare.holm([0.04, None, 0.01, 0.02])
    assert adjusted[1] is None
    assert [adjusted[i] for i in (0, 2, 3)] == pytest.approx([0.04, 0.03, 0.04])


def test_a_borderline_point_is_not_significant_among_many():
    """One point at p ~ 0.01 alone is a regression; among 20 unchanged points it is not."""
    base, cand = samples(1.0, 0.3, n=8, seed=20), samples(1.35, 0.3, n=8, seed=21)
    alone = compare.judge(point(base), point(cand), 0.1)
    assert alone.verdict == "regressed" and 0.001 < alone.p < 0.05, alone
    key = dict(machine="m", compile="eager", batch=1, L_k=8, d_model=8, heads=2, kv_heads=2, dtype="float32",
               causal=False, device="cpu", impl="x", **{"pass": "forward"})
    olds = [dict(key, L_q=0, **point(base))] + [dict(key, L_q=i, **point(samples(1.0, seed=i))) for i in range(1, 20)]
    news = [dict(key, L_q=0, **point(cand))] + [dict(key, L_q=i, **point(samples(1.0, seed=100 + i)))
                                                for i in range(1, 20)]
    first = compare.compare_records(olds, news, 0.1)[0]
    assert first.verdict.verdict == "uncertain" and first.verdict.p > alone.p, first.verdict
