"""The tolerance rule (conformance/tolerance.py, SPEC section 6) on known-good and
known-bad results of the same computation."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from attnsuite.conformance.cases import catalog
from attnsuite.conformance.tolerance import BASELINE_RULE, CLOSENESS, compare
from attnsuite.impls import oracle
from tests.plugins.numpy_impls import attend

# A few numeric cases of different shapes and features, from the catalog itself.
CASES = [c for c in catalog("quick", dtypes=["float32"]) if c.checks == ("output", "grads")][:6]


def _data(case, dtype=None):
    """The case's arrays, rounded to ``dtype`` (default the case's own)."""
    data = case.replace(dtype=dtype or case.dtype).materialize()
    return data, (case.spec, data.weights, data.query, data.key, data.value)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_float32_computation_fails_float64(case):
    data, args = _data(case, "float64")
    expected = oracle.forward(*args, data.mask, data.bias)
    in_float32 = oracle.forward(*args, data.mask, data.bias, precision="float32")
    result = compare(in_float32, expected, "float64", valid=~data.fully_masked[..., None])
    assert not result.ok and result.ratio > 100, f"{case.id}: {result.describe()}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_float32_code_passes_float32_with_margin(case):
    data, args = _data(case)
    spec, weights, query, key, value = args
    as32 = lambda a: None if a is None else np.asarray(a, np.float32)  # noqa: E731
    actual = attend(spec, {n: as32(w) for n, w in weights.items()}, as32(query), as32(key),
                    as32(value), data.mask, as32(data.bias))
    assert actual.dtype == np.float32
    expected = oracle.forward(*args, data.mask, data.bias)
    result = compare(actual, expected, "float32", valid=~data.fully_masked[..., None])
    assert result.ok and result.ratio < 0.1, f"{case.id}: {result.describe()}"


@pytest.mark.parametrize("dtype", list(CLOSENESS))
def test_relative_error_of_1e_3_fails(dtype):
    data, args = _data(CASES[0], dtype)
    expected = oracle.forward(*args)
    result = compare(expected * (1 + 1e-3), expected, dtype)
    assert not result.ok and result.ratio > 4, result.describe()


@pytest.mark.parametrize("dtype", list(BASELINE_RULE))
@pytest.mark.parametrize("case", CASES[:4], ids=lambda c: c.id)
def test_baseline_rule_passes_sound_and_fails_wrong_low_precision(case, dtype):
    data, args = _data(case, dtype)
    spec = args[0]
    expected = oracle.forward(*args, data.mask, data.bias)
    baseline = oracle.forward(*args, data.mask, data.bias, precision=dtype)
    valid = ~data.fully_masked[..., None]
    low = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dtype]
    round_low = lambda a: np.asarray(a).astype(low).astype(np.float64)  # noqa: E731

    # Sound: float32 arithmetic, one rounding to the dtype at the end (what fused kernels do).
    sound = round_low(oracle.forward(*args, data.mask, data.bias, precision="float32"))
    assert compare(sound, expected, dtype, baseline=baseline, valid=valid).ok, case.id
    # Sound but noisier than the baseline: one more rounding error per element.
    ulp = np.abs(baseline) * 2.0 ** -ml_dtypes.finfo(low).nmant
    noisy = round_low(baseline + ulp * np.sign(np.random.default_rng(0).standard_normal(baseline.shape)))
    result = compare(noisy, expected, dtype, baseline=baseline, valid=valid)
    assert result.ok, f"{case.id}: {result.describe()}"
    # Wrong: the logits scaled by 1/d_k instead of 1/sqrt(d_k), in the same dtype.
    wrong_spec = spec.replace(scale=1.0 / spec.d_k)
    wrong = oracle.forward(wrong_spec, *args[1:], data.mask, data.bias, precision=dtype)
    result = compare(wrong, expected, dtype, baseline=baseline, valid=valid)
    assert not result.ok, f"{case.id}: a wrong scale passed: {result.describe()}"


def test_baseline_rule_states_its_numbers():
    expected = np.linspace(-1, 1, 12)
    result = compare(expected, expected, "bfloat16", baseline=expected + 1e-3)
    assert result.ok and result.ratio == 0
    assert "3*baseline err" in result.rule and "0.0078125" in result.rule, result.rule
    grad = compare(expected, expected, "bfloat16", baseline=expected + 1e-3, gradient=True)
    assert "5*baseline err" in grad.rule, grad.rule


def test_gradient_zero_in_the_math_is_held_to_an_absolute_bound():
    expected = np.array([1e-17, -2e-17, 0.0])          # bk's gradient: zero up to rounding
    scale = 10.0                                       # the case's largest gradient
    noise = compare(np.array([3e-7, -2e-7, 1e-7]), expected, "float32", scale_floor=scale,
                    absolute=True)
    assert noise.ok, noise.describe()
    assert "|ref|" not in noise.rule, noise.rule
    wrong = compare(np.array([0.0, 0.0, 1e-2]), expected, "float32", scale_floor=scale, absolute=True)
    assert not wrong.ok and wrong.index == (2,), wrong.describe()
    # Without the floor, rounding noise on a zero tensor would fail.
    assert not compare(np.array([3e-7, 0, 0]), expected, "float32").ok


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_non_finite_where_oracle_is_finite_fails(dtype, bad):
    expected = np.ones((2, 3, 4))
    actual = expected.copy()
    actual[1, 2, 3] = bad
    result = compare(actual, expected, dtype, baseline=expected)
    assert not result.ok and result.problem == "non-finite", result.describe()
    assert result.index == (1, 2, 3) and "non-finite" in result.describe()


def test_worst_element_is_reported_with_values_errors_and_bound():
    expected = np.arange(1.0, 25.0).reshape(2, 3, 4)
    actual = expected.copy()
    actual[0, 1, 2] += 0.5       # the worst
    actual[1, 0, 0] += 0.01      # bad too, less so
    result = compare(actual, expected, "float32")
    assert not result.ok
    assert result.index == (0, 1, 2)
    assert result.actual == actual[0, 1, 2] and result.expected == expected[0, 1, 2]
    assert result.abs_err == pytest.approx(0.5) and result.rel_err == pytest.approx(0.5 / 7)
    assert result.bound == pytest.approx(1e-4 * 24 + 1e-4 * 7)
    text = result.describe()
    for piece in ("[0, 1, 2]", "got 7.5", "expected 7", "|err| 0.5", "bound", "ratio"):
        assert piece in text, f"{piece!r} missing from {text!r}"


def test_shape_mismatch_fails():
    result = compare(np.zeros((2, 5, 7)), np.zeros((2, 5, 8)), "float32")
    assert not result.ok and result.problem == "shape" and "(2, 5, 7)" in result.describe()


def test_excluded_elements_are_not_judged():
    expected = np.ones((2, 4, 3))
    actual = expected.copy()
    actual[1, 2] = np.nan                                  # a row with no visible key
    valid = np.ones((2, 4, 1), bool)
    valid[1, 2] = False
    assert compare(actual, expected, "float32", valid=valid).ok
    assert not compare(actual, expected, "float32").ok
