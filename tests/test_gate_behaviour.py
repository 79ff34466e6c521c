"""The behaviour checks (stateless, deterministic, dropout), rows with no visible key,
and the stress cases: each catches the flaw it is there for, and only that one."""

from __future__ import annotations

import numpy as np
import pytest

from attnsuite.conformance.cases import find_case
from attnsuite.conformance.checks import DROPOUT_RATE_SLACK, dropout_probe
from attnsuite.conformance.runner import check
from attnsuite.impls import oracle

P = "numpy:tests.plugins.numpy_impls:"
F32 = ["float32"]


def _failing(impl) -> set[tuple[str, str]]:
    return {(r.case_id, r.check) for r in impl.failures()}


def _only(name, **kwargs):
    return check([P + name], profile="quick", dtypes=F32, **kwargs).implementations[0]


@pytest.mark.parametrize("name", ["stateful", "cached_by_shape"])
def test_state_kept_between_calls_fails_stateless_only(name):
    impl = _only(name)
    assert {check for _, check in _failing(impl)} == {"stateless"}
    [failure] = impl.failures()
    assert "second call (new weights and inputs, same shapes)" in failure.message
    assert "keep state" in failure.message


def test_different_bits_on_the_same_inputs_fail_deterministic_only():
    impl = _only("nondeterministic")
    assert {check for _, check in _failing(impl)} == {"deterministic"}
    assert "differ in" in impl.failures()[0].message


def test_dropout_probe_reads_the_attention_weights():
    case = find_case("h1-E16-nobias-dropout0.3-B8-Lq128-Lk16-dropout-float32")
    data = dropout_probe(case)
    out = oracle.forward(case.spec, data.weights, data.query, data.key, data.value)
    np.testing.assert_allclose(out, 1.0 / case.L_k)   # inference: every weight 1/L_k, in place


def test_dropout_right_passes_and_classic_mistakes_fail():
    right = _only("dropout")
    [result] = [r for r in right.results if r.check == "dropout"]
    assert result.status == "pass" and abs(result.detail["rate"] - 0.3) <= DROPOUT_RATE_SLACK
    for name, text in [("dropout_no_rescale", "1/(1-p)"), ("dropout_keeps_p", "1/(1-p)")]:
        impl = _only(name)
        assert {check for _, check in _failing(impl)} == {"dropout"}, name
        assert text in impl.failures()[0].message, name
    # No training keyword: dropout cannot be exercised, which is not a failure.
    [oracle_dropout] = [r for r in _only("correct").results if r.check == "dropout"]
    assert oracle_dropout.status == "unsupported" and "training" in oracle_dropout.message


@pytest.mark.parametrize("name, behaviour", [
    ("correct", "zeros"), ("uniform_fully_masked", "uniform"),
    ("nan_fully_masked", "nan"), ("leaky_mask", "unmasked"),
])
def test_fully_masked_rows_are_classified(name, behaviour):
    impl = check([P + name], profile="quick", dtypes=["float32", "float64"],
                 case_filter=lambda c: "fully_masked" in c.tags).implementations[0]
    rows = [r for r in impl.results if r.check == "fully_masked"]
    assert rows and {r.detail["behaviour"] for r in rows} == {behaviour}, [r.message for r in rows]
    # Not strict: whatever they do there is reported, not failed.
    assert all(r.status == "pass" for r in rows)
    if name == "nan_fully_masked":
        # The NaN of its empty rows reaches every gradient but bo's: recorded under
        # fully_masked, and the gradients fail (NaN where the oracle is finite always fails).
        assert {r.detail["grads"] for r in rows} == {"nan"}
        failing = _failing(impl)
        assert failing and {check for _, check in failing} <= {f"grad.{n}" for n in (
            "query", "key", "value", "wq", "wk", "wv", "wo", "bq", "bk", "bv")}, failing
        assert all("non-finite" in r.message for r in impl.failures())
        assert not [r for r in impl.results if r.check == "output" and r.status != "pass"]
    else:
        assert impl.verdict == "pass", [r.message for r in impl.failures()]


@pytest.mark.parametrize("name", ["uniform_fully_masked", "nan_fully_masked"])
def test_strict_fully_masked_fails_anything_but_zeros(name):
    only_masked = lambda c: "fully_masked" in c.tags  # noqa: E731
    strict = check([P + name, "numpy.oracle"], profile="quick", dtypes=F32, case_filter=only_masked,
                   strict_fully_masked=True)
    impl, reference = strict.implementations
    assert reference.verdict == "pass"
    assert impl.verdict == "fail"
    failing_checks = {check for _, check in _failing(impl)}
    assert {"fully_masked", "output"} <= failing_checks
    assert all("--strict-fully-masked" in r.message for r in impl.failures())


def test_naive_softmax_is_caught_by_the_large_logit_stress_alone():
    impl = check([P + "naive"], profile="default", dtypes=["float32", "float64"]).implementations[0]
    failing = _failing(impl)
    assert failing and all("stress_large_logits" in case_id for case_id, _ in failing)
    assert {"output"} <= {check for _, check in failing}


def test_mask_leak_is_caught_in_float32_by_the_huge_masked_values():
    impl = check([P + "leaky_mask"], profile="default", dtypes=F32).implementations[0]
    failing = {case_id for case_id, _ in _failing(impl)}
    # A weight of e^-20 is below float32's tolerance on ordinary values: only the stress
    # cases show it (masked logits near 133 leak too), both huge-value cases among them.
    assert all("stress_" in case_id for case_id in failing), failing
    assert len([c for c in failing if "stress_masked_huge_values" in c]) == 2, failing
