"""The oracle's plain low-precision computation (``precision=``), the baseline of the
float16/bfloat16 tolerance rule: it must be as inexact as a plain computation in that
dtype, or the rule's bound shrinks to its one-ulp floor and sound code fails.

The bias gradients are sums over batch and length. A plain sum in the dtype rounds every
partial sum, so its error grows with the number of rows summed.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from conftest import make_inputs
from attnsuite.conformance.cases import catalog
from attnsuite.conformance.checks import reference
from attnsuite.conformance.tolerance import BASELINE_RULE, compare
from attnsuite.impls import oracle
from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import init_weights

# The full profile's cases whose output-bias gradient sums 100 rows or more.
LONG_SUMS = [c for c in catalog("full", dtypes=list(BASELINE_RULE))
             if c.checks == ("output", "grads") and c.spec.bias and c.B * c.L_q >= 100]
# A bias gradient this far off must fail. A plain bfloat16 sum of a few hundred rows is
# itself about 1% off, and the rule allows 5 times the baseline's error.
WRONG_FACTOR = {"float16": 1.05, "bfloat16": 1.1}


@functools.cache
def _reference(case):
    return reference(case)


def _judge(case, name: str, actual):
    """The gate's verdict on gradient ``name`` (conformance.checks._judge_grads)."""
    ref = _reference(case)
    scale = max(float(np.abs(g).max()) for g in ref.grads.values())
    return compare(actual, ref.grads[name], case.dtype, baseline=ref.base_grads[name],
                   gradient=True, scale_floor=scale)


@pytest.mark.parametrize("shape, axis", [((5, 7, 3), (0, 1)), ((1, 257, 2), (0, 1)),
                                         ((2, 33, 4), 1), ((3, 1, 2), (0, 1)), ((4, 5), -1),
                                         ((1100, 2), 0), ((0, 5, 2), (0, 1))], ids=str)
def test_low_precision_sum_adds_every_term_once(shape, axis):
    # Small integers add exactly in float32 in any order: a term dropped or counted twice
    # (blocks, padding, the levels of block sums) shows.
    x = np.random.default_rng(0).integers(-8, 9, size=shape).astype(np.float64)
    got = oracle._low_precision_sum(x, axis, oracle.rounding("float32"))
    np.testing.assert_array_equal(got, x.sum(axis=axis), err_msg=f"shape {shape}, axis {axis}")


def test_baseline_bias_gradient_error_grows_with_the_rows_summed():
    spec = AttentionSpec(d_model=32, num_heads=2)
    r = oracle.rounding("bfloat16")
    weights = {name: r(w) for name, w in init_weights(spec, 0).items()}
    errors = {}
    for rows in (16, 128, 1024):
        x = {name: r(a) for name, a in make_inputs(spec, B=1, L_q=rows, seed=rows).items()}
        args = (spec, weights, x["query"], x["key"], x["value"], x["d_out"])
        exact = oracle.vjp(*args)["bo"]
        baseline = oracle.vjp(*args, precision="bfloat16")["bo"]
        errors[rows] = float(np.max(np.abs(baseline - exact)))
    assert errors[16] > 0, f"no rounding error in a bfloat16 sum of 16 rows: {errors}"
    assert errors[128] > 1.5 * errors[16] and errors[1024] > 1.5 * errors[128], (
        f"the error of the bfloat16 bias gradient does not grow with the rows summed: {errors}")


@pytest.mark.parametrize("case", LONG_SUMS, ids=lambda c: c.id)
def test_a_bias_gradient_summed_plainly_in_the_dtype_passes(case):
    # One running sum over all the rows: the least accurate plain order. Sound code (JAX
    # sums the bias gradients in the dtype on CPU) must not fail on its rounding.
    r = oracle.rounding(case.dtype)
    d_out = _reference(case).d_out
    plain = np.zeros(d_out.shape[-1])
    for row in d_out.reshape(-1, d_out.shape[-1]):
        plain = r(plain + row)
    result = _judge(case, "bo", plain)
    assert result.ok, f"{case.id}: a plain {case.dtype} sum failed: {result.describe()}"


@pytest.mark.parametrize("name", ["bo", "bv"])
@pytest.mark.parametrize("case", LONG_SUMS, ids=lambda c: c.id)
def test_a_bias_gradient_off_by_a_factor_fails(case, name):
    factor = WRONG_FACTOR[case.dtype]
    result = _judge(case, name, _reference(case).grads[name] * factor)
    assert not result.ok, f"{case.id}: gradient {name} x {factor} passed: {result.describe()}"
