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


# --- paired rounds (an interleaved run) ------------------------------------------------------

def drifting_rounds(ratio, n=40, seed=0, drift=1.0, noise=0.05):
    """``n`` rounds of (baseline, candidate) block times on a machine whose speed drifts by
    a factor up to e^(2 drift) from round to round (both blocks of a round alike), each block
    with its own ``noise``; the candidate ``ratio`` times slower."""
    rng = np.random.default_rng(seed)
    machine = np.exp(drift * rng.uniform(-1, 1, n))
    base = machine * np.exp(noise * rng.standard_normal(n))
    cand = ratio * machine * np.exp(noise * rng.standard_normal(n))
    return list(base), list(cand)


@pytest.mark.parametrize("seed", range(6))
def test_wilcoxon_signed_rank_matches_scipy(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    base = rng.lognormal(0, 0.3, 8 + 3 * seed)
    cand = base * np.exp(np.round(rng.normal(0.1 * (seed % 3), 0.3, len(base)), 1))  # rounded: ties and zeros
    w, p = significance.wilcoxon_signed_rank(base, cand)
    d = np.log(cand / base)
    expected = stats.wilcoxon(d, zero_method="wilcox", correction=True, method="approx")
    r_plus = significance._ranks(np.abs(d[d != 0]))[0][d[d != 0] > 0].sum()
    assert w == pytest.approx(r_plus) and p == pytest.approx(expected.pvalue, rel=1e-9), \
        f"d={d}: ours W+={w} p={p}, scipy {expected}"


def test_wilcoxon_signed_rank_by_hand():
    # log-ratios +1 +2 -3 +4 +5: W+ = 1+2+4+5 = 12, mean 5*6/4 = 7.5, variance 5*6*11/24 = 13.75;
    # z = (4.5 - 0.5) / sqrt(13.75), p = erfc(z / sqrt 2) = 0.281
    w, p = significance.wilcoxon_signed_rank([1.0] * 5, list(np.exp([1, 2, -3, 4, 5])))
    assert w == 12 and p == pytest.approx(math.erfc(4 / math.sqrt(13.75) / math.sqrt(2)))
    assert significance.wilcoxon_signed_rank([2.0, 3.0], [2.0, 3.0]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="paired"):
        significance.wilcoxon_signed_rank([1.0, 2.0], [1.0])


def test_hodges_lehmann_ratio_and_interval_by_hand():
    # log-ratios 1..10: 55 Walsh averages (i+j)/2, median 5.5. At 95%, C = floor(27.5 - 1.96 *
    # sqrt(10*11*21/24)) = 8; the 8 smallest averages: 1, 1.5, 2, 2, 2.5, 2.5, 3, 3 (sums 2..6),
    # so the interval is [3, 8] (the list is symmetric about 5.5).
    base, cand = [1.0] * 10, list(np.exp(np.arange(1, 11)))
    assert math.log(significance.paired_ratio(base, cand)) == pytest.approx(5.5)
    low, high = significance.paired_ratio_ci(base, cand)
    assert (math.log(low), math.log(high)) == pytest.approx((3.0, 8.0))
    # log-ratios 1, 2, 3, 10: Walsh averages 1 1.5 2 2 2.5 3 5.5 6 6.5 10, median 2.75
    assert math.log(significance.paired_ratio([1.0] * 4, list(np.exp([1, 2, 3, 10])))) == pytest.approx(2.75)


@pytest.mark.parametrize("seed", range(3))
def test_a_2x_slowdown_under_heavy_drift_is_regressed_only_when_paired(seed):
    """The machine's speed moves up to 55x between rounds (both blocks of a round alike):
    two independent samples overlap, the pairs' ratios all read about 2."""
    base, cand = drifting_rounds(2.0, n=20, seed=seed, drift=2.0)
    paired = compare.judge(point(base), point(cand), 0.1, same_session=True)
    assert paired.verdict == "regressed" and paired.ci[0] > 1.8 and paired.ci[1] < 2.2, paired
    unpaired = compare.judge(point(base), point(cand), 0.1)
    assert unpaired.verdict != "regressed", unpaired


def test_identical_or_unchanged_paired_rounds_are_never_regressed():
    base, _ = drifting_rounds(1.0, seed=1)
    same = compare.judge(point(base), point(list(base)), 0.1, same_session=True)
    assert same.verdict == "unchanged" and same.ratio == 1.0, same
    for seed in range(20):  # unchanged code under drift and noise, the largest looks at 5
        base, cand = drifting_rounds(1.0, n=160, seed=seed, noise=0.3)
        got = compare.judge(point(base) | {"looks": 5}, point(cand) | {"looks": 5}, 0.1, same_session=True)
        assert got.verdict in ("unchanged", "uncertain"), (seed, got)


def test_every_look_is_paid_for():
    """Five looks: p five times as large, the interval a 99% one, so wider."""
    base, cand = drifting_rounds(1.15, n=30, seed=3, noise=0.2)
    once = compare.judge(point(base), point(cand), 0.1, same_session=True)
    five = compare.judge(point(base) | {"looks": 5}, point(cand) | {"looks": 5}, 0.1, same_session=True)
    assert five.p == pytest.approx(min(1.0, 5 * once.p))
    assert five.ci[0] < once.ci[0] <= once.ratio <= once.ci[1] < five.ci[1]
    assert five.ratio == once.ratio


@pytest.mark.parametrize("ratio, decided", [(2.0, True), (1.0, True), (1.1, False)])
def test_an_interleaved_point_stops_when_its_verdict_is_decided(ratio, decided):
    base, cand = drifting_rounds(ratio, n=40, seed=5, noise=0.05)
    assert compare.settled(base, cand, 0.1, looks=5, points=4) is decided


def test_the_stopping_rule_is_no_less_strict_than_the_final_verdict():
    """A point that stopped as regressed stays regressed after Holm over its points."""
    key = dict(machine="m", compile="eager", batch=1, L_k=8, d_model=8, heads=2, kv_heads=2, dtype="float32",
               causal=False, device="cpu", impl="x", **{"pass": "forward"})
    olds, news = [], []
    for i, ratio in enumerate([1.3, 1.0, 1.0, 1.0]):
        base, cand = drifting_rounds(ratio, n=20, seed=30 + i, noise=0.1)
        if i == 0:
            assert compare.settled(base, cand, 0.1, looks=5, points=4)
        olds.append(dict(key, L_q=i, looks=5, **point(base)))
        news.append(dict(key, L_q=i, looks=5, **point(cand)))
    assert compare.compare_records(olds, news, 0.1, same_session=True)[0].verdict.verdict == "regressed"
