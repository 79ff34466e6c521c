"""The ours-against-native table: throughput ratios, their intervals and the target,
read from `bench compare --json` points (built here, no timing)."""

from __future__ import annotations

import pytest

from attnsuite.bench import ours_vs_native as ovn


def _point(ratio, ci, **extra):
    return {"compile": "eager", "pass": "forward", "L_q": 128, "d_model": 256, "heads": 4,
            "kv_heads": 4, "dtype": "float32", "causal": False, "ratio": ratio, "ci": ci,
            "p": 0.001, "reason": "", **extra}


def test_throughput_is_the_inverse_of_the_time_ratio_and_so_is_its_interval():
    throughput, (low, high) = ovn.relative_throughput(_point(1.25, (1.1, 1.6)))
    assert throughput == pytest.approx(0.8)
    assert (low, high) == pytest.approx((1 / 1.6, 1 / 1.1))


@pytest.mark.parametrize("interval, verdict", [((0.96, 1.2), "meets"), ((0.80, 0.94), "MISSES"),
                                               ((0.90, 1.05), "undecided"), ((0.95, 0.99), "meets")])
def test_a_point_meets_the_target_only_when_its_whole_interval_does(interval, verdict):
    assert ovn.against_target(interval) == verdict


def test_the_table_counts_each_outcome_and_says_why_a_point_was_not_measured():
    points = [_point(1.0 / 1.1, (1 / 1.3, 1 / 1.01)), _point(1.3, (1.2, 1.4)),
              _point(None, None, reason="now measured (was unsupported)", samples=[0, 12])]
    text = ovn.table({("torch.sdpa", "torch.fused"): points}, "quick", 1)
    assert "Points: 1 meets, 0 undecided, 1 misses." in text
    assert "| native not measured |" in text
    assert text.count("| torch.fused | torch.sdpa |") == 3
