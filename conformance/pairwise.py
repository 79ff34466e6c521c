"""Pairwise (strength-2) covering arrays: every pair of feature values meets in some case.

Features interact where ports break (grouped heads under a causal rule, a rank-2 mask on
a self-attention call), and listing the interactions by hand leaves some pairs out. A
covering array of strength 2 holds, for every two factors, every pair of their levels
that a valid row can hold, in far fewer rows than the full product.

``covering_array`` builds one greedily in the way of AETG (Cohen et al., 1997): each new
row starts from a pair still uncovered and takes, factor by factor, the level that covers
the most uncovered pairs; of several such candidates the best is kept. ``allowed`` states
the constraints on a partial row (a dict of the factors assigned so far), and a level is
taken only if the row can still be completed, so every row is valid and a pair that no
valid row can hold is not asked for. Seeded: the same arguments give the same rows.
"""

from __future__ import annotations

import itertools
import random
from typing import Callable, Hashable, Mapping, Sequence

Row = dict[str, Hashable]
Pair = tuple[tuple[str, Hashable], tuple[str, Hashable]]


def _pair(a: str, va: Hashable, b: str, vb: Hashable, order: Mapping[str, int]) -> Pair:
    return ((a, va), (b, vb)) if order[a] < order[b] else ((b, vb), (a, va))


def pairs_of(row: Row, order: Mapping[str, int]) -> set[Pair]:
    """Every pair of (factor, level) that ``row`` holds."""
    return {_pair(a, row[a], b, row[b], order) for a, b in itertools.combinations(row, 2)}


def _completion(row: Row, factors: Mapping[str, Sequence], allowed) -> Row | None:
    """``row`` extended to every factor within the constraints, or None if it cannot be."""
    if not allowed(row):
        return None
    missing = [name for name in factors if name not in row]
    if not missing:
        return row
    for level in factors[missing[0]]:
        completed = _completion({**row, missing[0]: level}, factors, allowed)
        if completed is not None:
            return completed
    return None


def feasible_pairs(factors: Mapping[str, Sequence], allowed: Callable[[Row], bool]) -> set[Pair]:
    """The pairs that some valid row can hold: what a covering array must cover."""
    order = {name: i for i, name in enumerate(factors)}
    return {_pair(a, va, b, vb, order)
            for a, b in itertools.combinations(factors, 2)
            for va in factors[a] for vb in factors[b]
            if _completion({a: va, b: vb}, factors, allowed) is not None}


def covering_array(factors: Mapping[str, Sequence], allowed: Callable[[Row], bool] = lambda row: True,
                   candidates: int = 24, seed: int = 0) -> list[Row]:
    """Rows (factor -> level, every factor set) covering every feasible pair of levels."""
    order = {name: i for i, name in enumerate(factors)}
    uncovered = feasible_pairs(factors, allowed)
    rng = random.Random(seed)
    rows: list[Row] = []
    while uncovered:
        best, best_gain = None, -1
        pool = sorted(uncovered, key=repr)
        for _ in range(candidates):
            (a, va), (b, vb) = rng.choice(pool)
            row: Row = {a: va, b: vb}
            rest = [name for name in factors if name not in row]
            rng.shuffle(rest)
            for name in rest:
                scored = []
                for level in factors[name]:
                    trial = {**row, name: level}
                    if _completion(trial, factors, allowed) is None:
                        continue
                    gain = sum(_pair(name, level, other, row[other], order) in uncovered
                               for other in row)
                    scored.append((gain, rng.random(), level))
                row[name] = max(scored, key=lambda s: s[:2])[2]
            gain = len(pairs_of(row, order) & uncovered)
            if gain > best_gain:
                best, best_gain = row, gain
        rows.append({name: best[name] for name in factors})
        uncovered -= pairs_of(best, order)
    return rows
