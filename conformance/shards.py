"""Sharding for CI matrices: ``attnsuite check ... --shard K/N`` judges shard K of N.

A shard is a set of the run's cases, judged on every implementation of the run, so the
(implementation x case) work splits as the cases do. The cases are dealt by estimated
cost, largest first, each to the shard with the least so far (ties: the lower shard, then
the earlier case): balanced, and the same on every machine (integer costs, no hashing, no
randomness). ``attnsuite report`` merges the shards' reports (conformance/merge.py).
"""

from __future__ import annotations

import argparse

from attnsuite.conformance.cases import NUMERIC, Case

CASE_OVERHEAD = 1000        # cost units every case pays (calls, autodiff, comparisons: most of
                            # the time of a small case, measured on CPU) ...
MULTIPLY_ADDS_PER_UNIT = 2000   # ... plus one unit per this many multiply-adds of one call
CALLS = {"numeric": 3, "stateless": 3, "deterministic": 2, "dropout": 6, "contract": 2, "decode": 4}


def parse_shard(text: str) -> tuple[int, int]:
    """An argparse type: "K/N" with 1 <= K <= N."""
    index, slash, count = text.partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        index = count = 0
    if not slash or not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N (shard K of N), got {text!r}")
    return index, count


def estimated_cost(case: Case) -> int:
    """How long judging ``case`` takes, in relative units: a fixed overhead plus the
    multiply-adds of the projections and the attention, times the calls its checks make."""
    s = case.spec
    projections = case.L_q * s.E * s.H * s.d_k + case.L_k * s.H_kv * (s.E_k * s.d_k + s.E_v * s.d_v)
    attention = s.H * case.L_q * case.L_k * (s.d_k + s.d_v) + case.L_q * s.H * s.d_v * s.E_o
    calls = CALLS["numeric" if case.checks == NUMERIC else case.checks[0]]
    return CASE_OVERHEAD + calls * case.B * (projections + attention) // MULTIPLY_ADDS_PER_UNIT


def shard_positions(cases: list[Case], index: int, count: int) -> list[int]:
    """The positions (in ``cases``) of shard ``index`` of ``count``, in run order."""
    costs = [estimated_cost(c) for c in cases]
    loads = [0] * count
    shards: list[list[int]] = [[] for _ in range(count)]
    for position in sorted(range(len(cases)), key=lambda p: (-costs[p], p)):
        lightest = min(range(count), key=lambda s: (loads[s], s))
        loads[lightest] += costs[position]
        shards[lightest].append(position)
    return sorted(shards[index - 1])
