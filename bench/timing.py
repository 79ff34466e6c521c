"""Timing one zero-argument call: first call apart, warm-up, calibrated blocks, statistics.

The protocol (after ``torch.utils.benchmark``'s ``blocked_autorange`` and pytest-benchmark's
calibration, with compilation kept out of both):

1. ``first_call`` times the very first call on its own: it includes tracing/compiling,
   so the compile time is reported as first call minus the steady-state median.
2. ``measure`` warms up, then calibrates the number of calls per timed block (``loops``)
   until one block lasts at least ``min_block_time`` (far above the clock's resolution
   and the cost of a synchronisation), and discards those blocks.
3. It then times blocks of ``loops`` calls until at least ``min_runs`` blocks are in and
   the spread is small (IQR / median at most ``target_rel_iqr``), or ``max_time`` has
   been spent (``stable`` is then False).

Every call is waited on (``block(result)``) before the next one starts: the figure is
latency, the time until a result is ready. Left unblocked, an asynchronous framework
(JAX's dispatch, CUDA streams) overlaps one call's dispatch with the previous call's
work, which measures pipelined throughput instead: on JAX CPU at small shapes that read
1.4-1.8x faster than a call followed by its wait.

``clock`` is injectable so that tests can drive the whole protocol with a fake clock.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Any, Callable

from attnsuite.bench import contention


@dataclasses.dataclass(frozen=True)
class Measurement:
    """Per-call times (seconds), one per timed block of ``loops`` calls."""

    times: tuple[float, ...]
    loops: int
    stable: bool
    others_cpus: float | None = None  # CPUs other processes kept busy meanwhile (bench.contention)

    @property
    def runs(self) -> int:
        return len(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def q1(self) -> float:
        return quantile(self.times, 0.25)

    @property
    def q3(self) -> float:
        return quantile(self.times, 0.75)

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def rel_iqr(self) -> float:
        return self.iqr / self.median if self.median > 0 else math.inf

    def stats(self) -> dict[str, Any]:
        """The columns a record keeps (seconds per call)."""
        return {
            "median_s": self.median, "q1_s": self.q1, "q3_s": self.q3, "iqr_s": self.iqr,
            "min_s": min(self.times), "max_s": max(self.times),
            "mean_s": statistics.fmean(self.times),
            "stdev_s": statistics.stdev(self.times) if self.runs > 1 else 0.0,
            "runs": self.runs, "loops": self.loops, "stable": self.stable,
            "samples_s": list(self.times), "others_cpus": self.others_cpus,
        }


def quantile(values, q: float) -> float:
    """Linear-interpolation quantile (NumPy's default), without importing NumPy."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def _no_block(result):
    return result


def first_call(call: Callable[[], Any], block: Callable = _no_block,
               clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds taken by one call, waited on (the cold call: compilation included)."""
    start = clock()
    block(call())
    return clock() - start


def _time_block(call, block, loops: int, clock) -> float:
    start = clock()
    for _ in range(loops):
        block(call())
    return clock() - start


def calibrate(call: Callable[[], Any], block: Callable = _no_block, *,
              clock: Callable[[], float] = time.perf_counter, min_block_time: float = 2e-3,
              warmup_calls: int = 2) -> int:
    """Warm up, then find how many calls one timed block needs to last ``min_block_time``.

    The calibration blocks double as warm-up and are discarded.
    """
    _time_block(call, block, warmup_calls, clock)
    loops = 1
    while True:
        elapsed = _time_block(call, block, loops, clock)
        if elapsed >= min_block_time:
            return loops
        per_call = max(elapsed / loops, 1e-9)
        loops = min(max(loops * 2, math.ceil(1.2 * min_block_time / per_call)), loops * 100)


def measure(call: Callable[[], Any], block: Callable = _no_block, *,
            clock: Callable[[], float] = time.perf_counter,
            min_block_time: float = 2e-3, min_runs: int = 5, max_runs: int = 200,
            max_time: float = 1.0, target_rel_iqr: float = 0.1,
            warmup_calls: int = 2) -> Measurement:
    """Time ``call`` (already called once: see ``first_call``) until the median is stable.

    ``block(result)`` waits until ``result`` is ready (device synchronisation).
    """
    if min_runs < 2:
        raise ValueError(f"min_runs: need at least 2 to estimate a spread, got {min_runs}")
    loops = calibrate(call, block, clock=clock, min_block_time=min_block_time, warmup_calls=warmup_calls)
    times: list[float] = []
    started, window = clock(), contention.Window()
    while True:
        times.append(_time_block(call, block, loops, clock) / loops)
        if len(times) < min_runs:
            continue
        rel_iqr = (quantile(times, 0.75) - quantile(times, 0.25)) / statistics.median(times)
        if rel_iqr <= target_rel_iqr:
            return Measurement(tuple(times), loops, stable=True, others_cpus=window.others_cpus())
        if clock() - started >= max_time or len(times) >= max_runs:
            return Measurement(tuple(times), loops, stable=False, others_cpus=window.others_cpus())


def look_schedule(first: int, looks: int) -> list[int]:
    """The rounds after which a sequential run looks at its samples: ``first``, then twice
    as many each time, ``looks`` times (10, 20, 40, 80, 160)."""
    if first < 2 or looks < 1:
        raise ValueError(f"look_schedule: first >= 2 and looks >= 1, got {first} and {looks}")
    return [first * 2 ** k for k in range(looks)]


def measure_interleaved(calls: list[tuple[Callable[[], Any], Callable, int]], *,
                        clock: Callable[[], float] = time.perf_counter, min_runs: int = 5,
                        max_runs: int = 200, max_time: float = 1.0,
                        target_rel_iqr: float = 0.1,
                        decided: Callable[[list[list[float]]], bool] | None = None,
                        looks: list[int] | None = None) -> list[Measurement]:
    """Time several calibrated calls ``(call, block, loops)`` in alternation, one block each
    per round, the order reversed every other round (A B, B A, ...), so that a drift of the
    machine's speed touches them alike (``asv continuous``'s idea). The samples stay in
    round order: ``times[i]`` of every call come from round i.

    When to stop: by default, when every spread is small (each side's ``stable``), or
    after ``max_time`` per call, or ``max_runs`` rounds. A sequential run instead gives
    ``decided`` (the rounds so far -> is the answer known?) and the rounds ``looks`` after
    which it may be asked (``look_schedule``): it stops at the first look that is decided,
    at the last look, or when ``max_time`` per call is spent (``stable`` then says whether
    the answer was known)."""
    if min_runs < 2:
        raise ValueError(f"min_runs: need at least 2 to estimate a spread, got {min_runs}")
    if decided is not None:
        looks = sorted(looks or [min_runs])
        max_runs = looks[-1]
    times: list[list[float]] = [[] for _ in calls]
    started, window = clock(), contention.Window()
    rounds = 0

    def done(flags):
        others = window.others_cpus()
        return [Measurement(tuple(t), loops, stable=ok, others_cpus=others)
                for t, (_, _, loops), ok in zip(times, calls, flags)]

    while True:
        order = range(len(calls)) if rounds % 2 == 0 else reversed(range(len(calls)))
        for i in order:
            call, block, loops = calls[i]
            times[i].append(_time_block(call, block, loops, clock) / loops)
        rounds += 1
        out_of_time = clock() - started >= max_time * len(calls) or rounds >= max_runs
        if decided is not None:
            if rounds < looks[0] or not (rounds in looks or out_of_time):
                continue
            answer = decided(times)
            if answer or out_of_time:
                return done([answer] * len(calls))
            continue
        if rounds < min_runs:
            continue
        settled = [(quantile(t, 0.75) - quantile(t, 0.25)) / statistics.median(t) <= target_rel_iqr
                   for t in times]
        if all(settled) or out_of_time:
            return done(settled)
