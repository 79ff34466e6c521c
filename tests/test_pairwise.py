"""The covering-array generator: every feasible pair covered, constraints kept, seeded."""

from __future__ import annotations

import itertools

import pytest

from attnsuite.conformance.pairwise import covering_array, feasible_pairs, pairs_of

FACTORS = {"heads": ["mha", "gqa3", "mqa"], "mask": ["none", "rank2", "rank4", "padding"],
           "causal": [None, "top_left", "bottom_right"], "form": ["qkv", "self", "kv"],
           "lengths": ["lt", "gt", "eq", "one"], "dtype": ["f64", "f32", "f16", "bf16"]}


def self_needs_square(row) -> bool:
    return not (row.get("form") == "self" and row.get("lengths") in ("lt", "gt"))


def _order():
    return {name: i for i, name in enumerate(FACTORS)}


@pytest.mark.parametrize("allowed", [lambda row: True, self_needs_square], ids=["free", "constrained"])
def test_every_feasible_pair_is_covered_by_valid_rows(allowed):
    rows = covering_array(FACTORS, allowed)
    covered = set().union(*(pairs_of(row, _order()) for row in rows))
    assert feasible_pairs(FACTORS, allowed) <= covered
    assert all(allowed(row) and set(row) == set(FACTORS) for row in rows)
    # Far fewer rows than the product, and not far above the lower bound (the two largest
    # factors' level counts multiplied: each of their pairs needs a row of its own).
    assert len(rows) <= 1.6 * 4 * 4, len(rows)


def test_impossible_pairs_are_not_asked_for():
    pairs = feasible_pairs(FACTORS, self_needs_square)
    order = _order()
    assert (("form", "self"), ("lengths", "lt")) not in pairs
    assert (("form", "self"), ("lengths", "eq")) in pairs
    assert len(pairs) == sum(len(FACTORS[a]) * len(FACTORS[b])
                             for a, b in itertools.combinations(FACTORS, 2)) - 2
    assert all(order[a[0]] < order[b[0]] for a, b in pairs)


def test_the_same_seed_gives_the_same_rows_and_another_seed_other_rows():
    assert covering_array(FACTORS, seed=3) == covering_array(FACTORS, seed=3)
    assert covering_array(FACTORS, seed=3) != covering_array(FACTORS, seed=4)


def test_a_row_set_missing_a_pair_is_told_apart():
    """The coverage check the tests rely on can fail: drop a row, some pair goes uncovered."""
    rows = covering_array(FACTORS)
    required = feasible_pairs(FACTORS, lambda row: True)
    losses = [required - set().union(*(pairs_of(r, _order()) for r in rows[:i] + rows[i + 1:]))
              for i in range(len(rows))]
    assert any(losses)
