"""The FLOP formula on worked examples, and the timing protocol on a fake clock."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from attnsuite.bench import flops, timing
from attnsuite.impls.spec import AttentionSpec


# --- FLOPs -------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, B, L_q, L_k, expected", [
    # E=8, H=2, d_k=d_v=4, L=4. Projections: 4 of them, each 2*L*8*8 = 512 -> 2048.
    # QK^T and PV: 2*H*L*L*d = 2*2*4*4*4 = 256 each -> 512. Total 2560.
    (AttentionSpec(d_model=8, num_heads=2), 1, 4, 4, 2560),
    # Causal halves the attention terms only: 2048 + 256.
    (AttentionSpec(d_model=8, num_heads=2, causal="top_left"), 1, 4, 4, 2304),
    # Batch 3 triples everything.
    (AttentionSpec(d_model=8, num_heads=2), 3, 4, 4, 7680),
    # One kv head (MQA): K and V project to 4 columns: 2*4*8*4 = 256 each. 512+256+256+512
    # + 512 = 2048.
    (AttentionSpec(d_model=8, num_heads=2, num_kv_heads=1), 1, 4, 4, 2048),
    # Cross-attention L_q=4, L_k=6: Q, O 512 each; K, V 2*6*8*8 = 768 each -> 2560;
    # attention 2*2*4*6*(4+4) = 768. Total 3328.
    (AttentionSpec(d_model=8, num_heads=2), 1, 4, 6, 3328),
])
def test_forward_flops_worked_examples(spec, B, L_q, L_k, expected):
    got = flops.attention_flops(spec, B, L_q, L_k, "forward")
    assert got == expected, f"{spec} B={B} L_q={L_q} L_k={L_k}: {got} FLOPs, expected {expected}"


def test_forward_backward_is_three_forwards():
    spec = AttentionSpec(d_model=8, num_heads=2, causal="top_left")
    assert flops.attention_flops(spec, 1, 4, 4, "forward_backward") == 3 * 2304


def test_formula_matches_a_count_of_the_matmuls():
    """The formula against the multiply-adds of the oracle's own matmul shapes."""
    spec = AttentionSpec(d_model=24, num_heads=6, num_kv_heads=2, head_dim=5, value_head_dim=7, out_dim=10)
    B, L_q, L_k = 2, 9, 11
    s = spec
    macs = (B * L_q * s.E * s.H * s.d_k + B * L_k * s.E_k * s.H_kv * s.d_k
            + B * L_k * s.E_v * s.H_kv * s.d_v + B * L_q * s.H * s.d_v * s.E_o
            + B * s.H * L_q * L_k * s.d_k + B * s.H * L_q * L_k * s.d_v)
    assert flops.attention_flops(spec, B, L_q, L_k, "forward") == 2 * macs, f"{spec} B={B} L_q={L_q} L_k={L_k}"


def test_unknown_pass_is_rejected():
    with pytest.raises(ValueError, match="pass_"):
        flops.attention_flops(AttentionSpec(d_model=8, num_heads=2), 1, 4, 4, "backward")


# --- Timing on a fake clock --------------------------------------------------------------

class FakeClock:
    """A clock that only moves when a fake call says how long it took."""

    def __init__(self):
        self.now = 0.0
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def call_taking(self, durations):
        durations = iter(durations)

        def call():
            self.now += next(durations)
            self.calls += 1
            return self.calls
        return call


def test_first_call_is_timed_apart():
    clock = FakeClock()
    call = clock.call_taking([0.5])
    assert timing.first_call(call, clock=clock) == pytest.approx(0.5)


def test_steady_call_stops_at_min_runs_with_the_true_time():
    clock = FakeClock()
    jitter = itertools.cycle([0.99, 1.01, 1.0, 0.995, 1.005])
    call = clock.call_taking(1e-3 * j for j in jitter)
    m = timing.measure(call, clock=clock, min_block_time=10e-3, min_runs=5, max_time=10.0)
    assert m.stable, f"rel IQR {m.rel_iqr:.3f} with {m.runs} runs"
    assert m.runs == 5, f"a steady call needs no more than min_runs, took {m.runs}"
    assert m.loops * 1e-3 >= 10e-3, f"loops={m.loops} blocks last less than min_block_time"
    assert m.median == pytest.approx(1e-3, rel=0.01), f"median {m.median}"
    assert clock.calls < 200, f"{clock.calls} calls for a 1 ms function"


def test_tiny_call_is_batched_above_the_block_time():
    clock = FakeClock()
    call = clock.call_taking(itertools.repeat(1e-6))
    m = timing.measure(call, clock=clock, min_block_time=1e-3)
    assert m.loops * 1e-6 >= 1e-3, f"loops={m.loops}: a block of 1 µs calls lasts < 1 ms"
    assert m.median == pytest.approx(1e-6)


def test_noisy_call_stops_at_max_time_and_says_unstable():
    clock = FakeClock()
    rng = np.random.default_rng(0)
    call = clock.call_taking(1e-3 * rng.lognormal(0.0, 0.5, size=100_000))
    m = timing.measure(call, clock=clock, min_block_time=1e-4, max_time=0.2, max_runs=10_000)
    assert not m.stable, f"rel IQR {m.rel_iqr:.2f} was called stable"
    assert m.runs > 5
    # It stops within one block of the budget (loops=1: one call of at most ~10 ms).
    assert 0.2 <= sum(m.times) * m.loops < 0.25, f"spent {sum(m.times) * m.loops:.3f} s of a 0.2 s budget"
    assert m.median == pytest.approx(1e-3, rel=0.2), f"median {m.median} of a lognormal with median 1 ms"


def test_measurement_statistics():
    m = timing.Measurement(times=(4.0, 1.0, 3.0, 2.0, 5.0), loops=1, stable=True)
    stats = m.stats()
    assert (stats["median_s"], stats["q1_s"], stats["q3_s"], stats["iqr_s"]) == (3.0, 2.0, 4.0, 2.0)
    assert (stats["min_s"], stats["max_s"], stats["runs"]) == (1.0, 5.0, 5)
    assert math.isclose(stats["mean_s"], 3.0)
    assert stats["samples_s"] == [4.0, 1.0, 3.0, 2.0, 5.0] and stats["stable"] is True


def test_interleaved_calls_take_turns_in_mirrored_order_and_share_a_drift():
    """Two identical calls on a machine that slows down steadily (1% per call): timed one
    after the other the second would read slower; in alternation A B, B A, ... they agree."""
    clock, order = FakeClock(), []

    def call_named(name):
        def call():
            order.append(name)
            clock.now += 1e-3 * (1 + 0.01 * len(order))
        return call

    a, b = timing.measure_interleaved([(call_named("A"), lambda r: r, 1), (call_named("B"), lambda r: r, 1)],
                                      clock=clock, min_runs=6, max_runs=6)
    assert "".join(order) == "ABBAABBAABBA"
    assert a.runs == b.runs == 6
    assert a.median == pytest.approx(b.median, rel=0.01), (a.median, b.median)


def test_interleaved_measurement_says_which_timer_never_settled():
    clock = FakeClock()
    rng = np.random.default_rng(0)
    steady = clock.call_taking(itertools.repeat(1e-3))
    noisy = clock.call_taking(1e-3 * rng.lognormal(0.0, 0.5, size=100_000))
    m_steady, m_noisy = timing.measure_interleaved([(steady, lambda r: r, 1), (noisy, lambda r: r, 1)],
                                                   clock=clock, max_time=0.1)
    assert m_steady.stable and not m_noisy.stable
    assert m_steady.runs == m_noisy.runs > 5


def test_a_sequential_interleaved_run_looks_only_at_its_looks_and_stops_when_decided():
    clock, asked = FakeClock(), []
    calls = [(clock.call_taking(itertools.repeat(1e-3)), lambda r: r, 1) for _ in range(2)]

    def decided_at(rounds):
        def decided(times):
            assert len(times[0]) == len(times[1]), "a look between the two blocks of a round"
            asked.append(len(times[0]))
            return len(times[0]) >= rounds
        return decided

    a, b = timing.measure_interleaved(calls, clock=clock, min_runs=10, max_time=100.0,
                                      decided=decided_at(35), looks=timing.look_schedule(10, 5))
    assert asked == [10, 20, 40] and a.runs == b.runs == 40 and a.stable and b.stable
    asked.clear()
    a, _ = timing.measure_interleaved(calls, clock=clock, min_runs=10, max_time=100.0,
                                      decided=decided_at(10 ** 6), looks=timing.look_schedule(10, 5))
    assert asked == [10, 20, 40, 80, 160] and a.runs == 160 and not a.stable, "the last look is the last"


def test_a_sequential_run_out_of_time_takes_one_last_look_but_never_before_the_first():
    clock, asked = FakeClock(), []
    calls = [(clock.call_taking(itertools.repeat(1e-3)), lambda r: r, 1) for _ in range(2)]

    def never(times):
        asked.append(len(times[0]))
        return False

    # 2 ms a round, 0.05 s a side: out of time after 50 rounds, between the looks at 40 and 80
    a, _ = timing.measure_interleaved(calls, clock=clock, min_runs=10, max_time=0.05, decided=never,
                                      looks=timing.look_schedule(10, 5))
    assert asked[:3] == [10, 20, 40] and len(asked) == 4 and 40 < asked[-1] == a.runs < 80 and not a.stable
    asked.clear()
    a, _ = timing.measure_interleaved(calls, clock=clock, min_runs=10, max_time=1e-6, decided=never,
                                      looks=timing.look_schedule(10, 5))
    assert asked == [10] and a.runs == 10


def test_look_schedule_doubles():
    assert timing.look_schedule(10, 5) == [10, 20, 40, 80, 160]
    with pytest.raises(ValueError):
        timing.look_schedule(1, 5)


# --- The agreement criterion (bench.agreement) --------------------------------------------

@pytest.mark.parametrize("a, b, expected", [
    ((1.0, 2.0), (1.5, 3.0), True),    # overlapping
    ((1.0, 2.0), (2.0, 3.0), True),    # touching
    ((1.0, 2.0), (2.1, 3.0), False),   # apart
    ((2.1, 3.0), (1.0, 2.0), False),   # apart, either order
    ((1.0, 4.0), (2.0, 3.0), True),    # one inside the other
])
def test_two_timings_agree_when_their_iqrs_overlap(a, b, expected):
    from attnsuite.bench.agreement import agree
    assert agree(a, b) is expected, f"IQRs {a} and {b}"
