"""Baseline against candidate, point by point, with a test of significance:
``attnsuite bench compare BASE CAND [--threshold 0.1]``.

Points are matched on machine, implementation, compile mode, pass and configuration;
where a store holds a point several times, its latest record counts (one run's samples,
never two runs pooled). Each matched pair gets one verdict (``judge``):

- ``regressed``: the candidate is significantly slower (p < ``ALPHA`` = 0.01 after the
  Holm correction over the comparison's points: many points must not mean many chances of
  a false alarm) and the whole confidence interval of the ratio lies above 1 + threshold;
  or the point was measured before and no longer is.
- ``improved``: the mirror image (the interval below 1 / (1 + threshold)).
- ``unchanged``: the interval lies inside [1 / (1 + threshold), 1 + threshold].
- ``uncertain``: the samples cannot tell, and the reason says why: too few samples, no
  samples (a record from before samples were kept, or pytest-benchmark without
  ``--benchmark-save-data``), a machine oversubscribed while either side ran (other
  processes busy on the CPUs the run needed, ``oversubscribed``: the process then gets a
  fraction of a core, and two runs differ by the load, not the code; measured here, 2x
  to 5x at load 8-10 on 2 CPUs), a timer that never settled, or an interval that straddles the
  threshold. The load check is for two separate runs; an interleaved run (both sides in
  one session, ``attnsuite.bench.interleaved``) shares the load and skips it.

Two separate runs are two independent samples: the test is Mann–Whitney U, the ratio
that of the medians with its bootstrap interval. An interleaved run (``same_session``)
is a sequence of pairs, one block of each side per round: the test is the Wilcoxon
signed-rank test on the pairs' log-ratios and the ratio the median of the pairs' ratios
(``significance``), which cancels the drift the two blocks of a round share.

An interleaved run may look at its samples more than once and stop early
(``attnsuite.bench.interleaved``): up to ``looks`` times, fixed in advance and stored
in its records. Every look is a chance of a false alarm, so the verdict pays for all of
them (Bonferroni over the looks): the p-value is multiplied by ``looks`` before the Holm
correction, and the interval is a 1 - 0.05 / ``looks`` one (95% for all looks together).
Whatever rule stopped the run, P(some look of a point without a change reads
significant) <= ``looks`` x (alpha / ``looks``) = alpha, so the gate's false-alarm rate
stays at ``ALPHA``.

Only ``regressed`` fails a gate (exit 1).
"""

from __future__ import annotations

import dataclasses
import math
import statistics

from attnsuite.bench import significance
from attnsuite.bench.sweeps import Config

CONFIG_KEY = tuple(field.name for field in dataclasses.fields(Config))
KEY = ("machine", "impl", "compile", "pass", *CONFIG_KEY)
VERDICTS = ("regressed", "improved", "unchanged", "uncertain")
ALPHA = 0.01  # per comparison (Holm): a gate run on every commit must not cry wolf every 20th
CONTENTION_TOLERANCE = 0.25  # CPUs of background activity that do not count as contention
MIN_SAMPLES = 5  # the fewest a side for which Mann–Whitney can reach p < 0.05 (two-sided)


@dataclasses.dataclass(frozen=True)
class Verdict:
    verdict: str
    reason: str
    ratio: float | None = None          # median(candidate) / median(baseline)
    ci: tuple[float, float] | None = None
    p: float | None = None


def check_threshold(threshold: float) -> float:
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold: a finite fraction > 0 (0.1 = 10%), got {threshold!r}")
    return float(threshold)


def oversubscribed(record: dict) -> str | None:
    """Why the machine was too busy around this record to compare it with another run, or
    None. Measured: other processes kept more CPUs busy during the timing than the run
    left free (its ``--threads`` cap, else every CPU; ``bench.contention``). Else, for a
    record without that figure: the load average above the usable CPUs."""
    env = record.get("env") or {}
    cpus = env.get("cpus_usable") or env.get("cpu_count")
    if not isinstance(cpus, int):
        return None
    others = record.get("others_cpus")
    if isinstance(others, (int, float)):
        needed = min(env.get("threads") or cpus, cpus)
        if others + needed > cpus + CONTENTION_TOLERANCE:
            return f"other processes used {others:.1f} of {cpus} CPUs"
        return None
    load = record.get("load_avg_1min", env.get("load_avg_1min"))
    if isinstance(load, (int, float)) and load > cpus:
        return f"load {load:.1f} on {cpus} CPUs"
    return None


def looks_of(base: dict, cand: dict) -> int:
    """How many times the run that made these records could look at them (1: once)."""
    return max(int(r.get("looks") or 1) for r in (base, cand))


def evidence(a: list[float], b: list[float], *, paired: bool, looks: int = 1):
    """(ratio, its interval, p) of the candidate's samples ``b`` against the baseline's
    ``a``: paired rounds or two independent samples, paid for ``looks`` looks."""
    confidence = 1 - (1 - significance.CONFIDENCE) / looks
    if paired:
        ratio = significance.paired_ratio(a, b)
        ci = significance.paired_ratio_ci(a, b, confidence=confidence)
    else:
        ratio = statistics.median(b) / statistics.median(a)
        ci = significance.ratio_ci(a, b, confidence=confidence)
    return ratio, ci, _p_value(a, b, paired=paired, looks=looks)


def _p_value(a, b, *, paired: bool, looks: int) -> float:
    """The test's p-value, paid for ``looks`` looks (``evidence`` without the interval)."""
    test = significance.wilcoxon_signed_rank if paired else significance.mann_whitney
    return min(1.0, looks * test(a, b)[1])


def _paired(a, b, same_session: bool) -> bool:
    return same_session and len(a) == len(b)


def judge(base: dict, cand: dict, threshold: float, *, alpha: float = ALPHA,
          same_session: bool = False, p_adjusted: float | None = None) -> Verdict:
    """The verdict on one point, from the baseline's and the candidate's records;
    ``same_session``: the two were timed in alternation, round by round (paired test, no
    load check); ``p_adjusted``: the point's p-value corrected for the other points of the
    comparison (``holm``)."""
    check_threshold(threshold)
    base_ok, cand_ok = base.get("status") == "ok", cand.get("status") == "ok"
    if not (base_ok and cand_ok):
        if base_ok:
            return Verdict("regressed", f"no longer measured: {cand.get('status')}")
        if cand_ok:
            return Verdict("improved", f"now measured (was {base.get('status')})")
        return Verdict("unchanged", f"not measured in either ({base.get('status')}, {cand.get('status')})")
    a, b = base.get("samples_s"), cand.get("samples_s")
    ratio = cand["median_s"] / base["median_s"]
    if not a or not b:
        which = " and ".join(side for side, s in (("baseline", a), ("candidate", b)) if not s)
        return Verdict("uncertain", f"no raw samples in the {which}", ratio)
    if min(len(a), len(b)) < MIN_SAMPLES:
        return Verdict("uncertain", f"few samples ({len(a)} and {len(b)}; need {MIN_SAMPLES} a side)", ratio)
    paired = _paired(a, b, same_session)
    ratio, (low, high), p = evidence(a, b, paired=paired, looks=looks_of(base, cand))
    p = p if p_adjusted is None else p_adjusted
    slower, faster = 1 + threshold, 1 / (1 + threshold)
    found = dict(ratio=ratio, ci=(low, high), p=p)
    significant = p < alpha
    if faster <= low and high <= slower:
        return Verdict("unchanged", "within the threshold", **found)
    if not same_session:
        busy = [f"{side} ({why})" for side, r in (("baseline", base), ("candidate", cand))
                if (why := oversubscribed(r))]
        if busy:
            return Verdict("uncertain", f"machine oversubscribed in the {' and '.join(busy)}", **found)
    if significant and low > slower:
        return Verdict("regressed", f"slower by more than {threshold:.0%}", **found)
    if significant and high < faster:
        return Verdict("improved", f"faster by more than {threshold:.0%}", **found)
    # Paired rounds carry their own noise in the interval; the timer's flag adds nothing.
    unstable = [] if paired else [side for side, r in (("baseline", base), ("candidate", cand))
                                  if r.get("stable") is False]
    if unstable:
        return Verdict("uncertain", f"timer unstable in the {' and '.join(unstable)}", **found)
    after = f" after {len(a)} rounds" if paired else ""
    if not significant:
        return Verdict("uncertain", f"no significant difference (p={p:.2g}) but the interval "
                                    f"straddles the threshold{after}", **found)
    return Verdict("uncertain", f"the interval straddles the threshold{after}", **found)


def settled(base_times: list[float], cand_times: list[float], threshold: float, *, looks: int,
            points: int = 1) -> bool:
    """Would the paired verdict on these rounds be decided (not ``uncertain``) now, even
    after the Holm correction over ``points`` points? (The stopping rule of an interleaved
    run: Bonferroni over the points is never less strict than Holm.)"""
    def record(times):
        return {"status": "ok", "samples_s": times, "median_s": statistics.median(times), "looks": looks}
    verdict = judge(record(base_times), record(cand_times), threshold, alpha=ALPHA / max(points, 1),
                    same_session=True)
    return verdict.verdict != "uncertain"


@dataclasses.dataclass(frozen=True)
class Change:
    key: dict
    base: dict
    cand: dict
    verdict: Verdict


def point_key(record: dict, fields=KEY) -> tuple:
    return tuple(record.get(k) for k in fields)


def latest(records: list[dict], fields=KEY) -> dict[tuple, dict]:
    found: dict[tuple, dict] = {}
    for record in sorted(records, key=lambda r: r.get("timestamp") or ""):
        found[point_key(record, fields)] = record
    return found


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values (None stays None): a comparison of many points
    keeps its chance of any false alarm at ``ALPHA``, not ``ALPHA`` per point."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def _raw_p(base: dict, cand: dict, same_session: bool) -> float | None:
    """The point's p-value before the correction over points (after that over looks)."""
    a, b = base.get("samples_s"), cand.get("samples_s")
    if base.get("status") != "ok" or cand.get("status") != "ok" or not a or not b \
            or min(len(a), len(b)) < MIN_SAMPLES:
        return None
    return _p_value(a, b, paired=_paired(a, b, same_session), looks=looks_of(base, cand))


def compare_records(base: list[dict], cand: list[dict], threshold: float, fields=KEY,
                    same_session: bool = False) -> list[Change]:
    """Every point present in both, as a ``Change`` (in the baseline's order), the
    p-values corrected over all of them (``holm``)."""
    check_threshold(threshold)
    old, new = latest(base, fields), latest(cand, fields)
    keys = [key for key in old if key in new]
    adjusted = holm([_raw_p(old[key], new[key], same_session) for key in keys])
    return [Change(dict(zip(fields, key)), old[key], new[key],
                   judge(old[key], new[key], threshold, same_session=same_session, p_adjusted=p))
            for key, p in zip(keys, adjusted)]


def pair_up(records: list[dict], threshold: float) -> list[Change]:
    """The baseline and the candidate of an interleaved run (``role``), matched on
    everything but the implementation (the two may be one implementation: an A/A test)."""
    fields = tuple(k for k in KEY if k != "impl")
    return compare_records([r for r in records if r.get("role") == "baseline"],
                           [r for r in records if r.get("role") == "candidate"], threshold, fields,
                           same_session=True)


def counts(changes: list[Change]) -> dict[str, int]:
    return {v: sum(c.verdict.verdict == v for c in changes) for v in VERDICTS}
