"""The oracle's hand-derived backward (SPEC 4) against central finite differences, in float64.

``assert_vjp_matches_finite_differences`` is the check: the full gradient of
sum(out * d_out) with respect to query, key, value and every weight, element by element.
The last tests show it can fail: deliberately wrong backwards are caught by it.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_inputs
from attnsuite.impls import oracle
from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import init_weights

EPS = 1e-6        # the step of the central differences: truncation error ~EPS**2
RTOL = 1e-6       # of the largest entry of each gradient
ROUNDING = 1e-15  # relative rounding error of sum(out * d_out), which a difference divides by EPS


def finite_difference_grads(forward, arrays: dict[str, np.ndarray], d_out: np.ndarray,
                            eps: float = EPS) -> dict[str, np.ndarray]:
    """Central differences of sum(forward(arrays) * d_out) with respect to every array."""
    arrays = {name: np.array(a, dtype=np.float64) for name, a in arrays.items()}

    def objective() -> float:
        return float(np.sum(forward(arrays) * d_out))

    grads = {}
    for name, array in arrays.items():
        grad = np.empty_like(array)
        for index in np.ndindex(array.shape):
            original = array[index]
            array[index] = original + eps
            plus = objective()
            array[index] = original - eps
            minus = objective()
            array[index] = original
            grad[index] = (plus - minus) / (2 * eps)
        grads[name] = grad
    return grads


def worst_mismatch(analytic: np.ndarray, numeric: np.ndarray, atol: float) -> str | None:
    """None if within bounds, else a line naming the worst element."""
    if analytic.shape != numeric.shape:
        return f"shape {analytic.shape}, finite differences {numeric.shape}"
    error = np.abs(analytic - numeric)
    bound = atol + RTOL * np.max(np.abs(numeric), initial=0.0)
    if np.all(error <= bound):  # False for NaN as well
        return None
    index = np.unravel_index(np.argmax(np.where(np.isnan(error), np.inf, error)), error.shape)
    return (f"worst at {tuple(int(i) for i in index)}: vjp {analytic[index]:.10g}, finite "
            f"differences {numeric[index]:.10g}, error {error[index]:.3g} > bound {bound:.3g}")


def assert_vjp_matches_finite_differences(spec, weights, inputs, mask=None, bias=None, *,
                                          vjp=oracle.vjp):
    """``vjp(spec, weights, query, key, value, d_out, mask, bias)`` against central finite
    differences of ``oracle.forward``; AssertionError naming every gradient that is off."""
    arrays = {name: inputs[name] for name in ("query", "key", "value")} | dict(weights)

    def forward(a):
        w = {name: a[name] for name in weights}
        return oracle.forward(spec, w, a["query"], a["key"], a["value"], mask, bias)

    numeric = finite_difference_grads(forward, arrays, inputs["d_out"])
    # A gradient that is zero in the math (bk) is all rounding noise: bound it by that.
    atol = ROUNDING * float(np.sum(np.abs(forward(arrays) * inputs["d_out"]))) / EPS
    analytic = vjp(spec, weights, inputs["query"], inputs["key"], inputs["value"],
                   inputs["d_out"], mask, bias)
    assert set(analytic) == set(numeric), f"{spec}: vjp gave {sorted(analytic)}"
    problems = [f"  {name}: {line}" for name in numeric
                if (line := worst_mismatch(analytic[name], numeric[name], atol)) is not None]
    if problems:
        shapes = {name: inputs[name].shape for name in ("query", "key", "value")}
        raise AssertionError(
            f"vjp disagrees with finite differences for {spec}, inputs {shapes}, "
            f"mask {None if mask is None else mask.shape}, "
            f"bias {None if bias is None else bias.shape}:\n" + "\n".join(problems))


# ---------------------------------------------------------------------------------------
# Masks and biases for a case, seeded.

def make_mask(kind, B, H, L_q, L_k, rng):
    """None, a random rank-2 or rank-4 mask, or a rank-4 one with a fully masked row."""
    if kind is None:
        return None
    if kind == "rank2":
        return rng.random((L_q, L_k)) < 0.7
    mask = rng.random((B, H, L_q, L_k)) < 0.7
    if kind == "empty_rows":
        mask[0, :, 0, :] = False    # query 0 of batch 0 sees nothing, in every head
        mask[-1, -1, -1, :] = False  # and the last query of the last head
    return mask


def make_bias(kind, B, H, L_q, L_k, rng):
    if kind is None:
        return None
    shape = (L_q, L_k) if kind == "rank2" else (B, H, L_q, L_k)
    return rng.standard_normal(shape)


def run_case(spec, L_q, L_k, mask_kind=None, bias_kind=None, B=2, seed=0, vjp=oracle.vjp):
    rng = np.random.default_rng(seed + 1)
    inputs = make_inputs(spec, B=B, L_q=L_q, L_k=L_k, seed=seed)
    mask = make_mask(mask_kind, B, spec.H, L_q, L_k, rng)
    bias = make_bias(bias_kind, B, spec.H, L_q, L_k, rng)
    assert_vjp_matches_finite_differences(spec, init_weights(spec, seed), inputs, mask, bias,
                                          vjp=vjp)


S = AttentionSpec
CASES = [
    pytest.param(S(8, 4, num_kv_heads=2), 4, 4, None, None, id="gqa"),
    pytest.param(S(8, 4, num_kv_heads=1), 4, 4, None, None, id="mqa"),
    pytest.param(S(6, 2, kdim=4, vdim=5), 3, 5, None, None, id="cross-kdim-vdim"),
    pytest.param(S(6, 2, head_dim=3, value_head_dim=2), 4, 4, None, None, id="value-head-dim"),
    pytest.param(S(6, 2, out_dim=4), 4, 4, None, None, id="out-dim"),
    pytest.param(S(6, 2, causal="top_left"), 3, 5, None, None, id="top-left-Lq<Lk"),
    pytest.param(S(6, 2, causal="top_left"), 5, 3, None, None, id="top-left-Lq>Lk"),
    pytest.param(S(6, 2, causal="bottom_right"), 3, 5, None, None, id="bottom-right-Lq<Lk"),
    pytest.param(S(6, 2, causal="bottom_right"), 5, 3, None, None, id="bottom-right-Lq>Lk"),
    pytest.param(S(6, 2, window=(1, 1)), 5, 5, None, None, id="window"),
    pytest.param(S(6, 2, causal="bottom_right", window=(2, 0)), 3, 6, None, None,
                 id="window-bottom-right"),
    pytest.param(S(6, 2, softcap=1.5), 4, 4, None, None, id="softcap"),
    pytest.param(S(6, 2), 4, 5, None, "rank2", id="bias-rank2"),
    pytest.param(S(6, 2), 4, 5, None, "rank4", id="bias-rank4"),
    pytest.param(S(6, 2), 4, 5, "rank2", None, id="mask-rank2"),
    pytest.param(S(6, 2), 4, 5, "empty_rows", None, id="mask-fully-masked-rows"),
    pytest.param(S(6, 2, bias=False), 4, 4, None, None, id="no-bias"),
    pytest.param(S(6, 2, scale=0.3), 4, 4, None, None, id="custom-scale"),
    pytest.param(S(6, 4, num_kv_heads=2, kdim=3, vdim=4, head_dim=2, value_head_dim=3, out_dim=5,
                   causal="bottom_right", window=(1, 0), softcap=2.0, scale=0.7),
                 3, 5, "empty_rows", "rank4", id="everything-at-once"),
]


@pytest.mark.parametrize("spec, L_q, L_k, mask_kind, bias_kind", CASES)
def test_vjp_matches_finite_differences(spec, L_q, L_k, mask_kind, bias_kind):
    run_case(spec, L_q, L_k, mask_kind, bias_kind)


@st.composite
def cases(draw):
    H_kv = draw(st.integers(1, 2))
    spec = AttentionSpec(
        d_model=draw(st.integers(1, 5)),
        num_heads=H_kv * draw(st.integers(1, 3)),
        num_kv_heads=H_kv,
        head_dim=draw(st.integers(1, 3)),
        kdim=draw(st.none() | st.integers(1, 4)),
        vdim=draw(st.none() | st.integers(1, 4)),
        value_head_dim=draw(st.none() | st.integers(1, 3)),
        out_dim=draw(st.none() | st.integers(1, 4)),
        bias=draw(st.booleans()),
        scale=draw(st.none() | st.floats(0.1, 2.0)),
        causal=draw(st.sampled_from([None, "top_left", "bottom_right"])),
        window=draw(st.none() | st.tuples(st.integers(0, 3), st.integers(0, 3))),
        softcap=draw(st.none() | st.floats(0.5, 5.0)),
    )
    return dict(
        spec=spec, B=draw(st.integers(1, 2)), L_q=draw(st.integers(1, 4)),
        L_k=draw(st.integers(1, 4)),
        mask_kind=draw(st.sampled_from([None, "rank2", "rank4", "empty_rows"])),
        bias_kind=draw(st.sampled_from([None, "rank2", "rank4"])),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=60, deadline=None)
@given(case=cases())
def test_vjp_matches_finite_differences_on_drawn_specs(case):
    run_case(**case)


# ---------------------------------------------------------------------------------------
# Rows with no visible key: out is bo, and nothing flows back through them.

def test_fully_masked_rows_give_bo_and_no_gradient():
    spec = AttentionSpec(6, 2, num_kv_heads=1)
    B, L_q, L_k = 2, 4, 5
    inputs = make_inputs(spec, B=B, L_q=L_q, L_k=L_k)
    weights = init_weights(spec)
    mask = np.ones((B, 1, L_q, L_k), dtype=bool)
    empty = [(0, 1), (1, 3)]  # (batch, query) pairs with no visible key
    for b, i in empty:
        mask[b, :, i, :] = False
    q, k, v = inputs["query"], inputs["key"], inputs["value"]

    out = oracle.forward(spec, weights, q, k, v, mask)
    for b, i in empty:
        np.testing.assert_array_equal(out[b, i], weights["bo"], err_msg=f"out[{b}, {i}]")

    grads = oracle.vjp(spec, weights, q, k, v, inputs["d_out"], mask)
    for name, grad in grads.items():
        assert np.all(np.isfinite(grad)), f"{name}: not finite"
    for b, i in empty:
        assert not np.any(grads["query"][b, i]), f"query gradient of the empty row ({b}, {i})"

    # A cotangent on the empty rows alone reaches bo and nothing else.
    d_out = np.zeros_like(inputs["d_out"])
    for b, i in empty:
        d_out[b, i] = inputs["d_out"][b, i]
    grads = oracle.vjp(spec, weights, q, k, v, d_out, mask)
    for name, grad in grads.items():
        if name == "bo":
            np.testing.assert_allclose(grad, d_out.sum(axis=(0, 1)), rtol=1e-15)
        else:
            assert not np.any(grad), f"{name}: a cotangent on empty rows leaked into it"


# ---------------------------------------------------------------------------------------
# The check can fail: wrong backwards are caught by the same checker.

MUTANT_SPEC = AttentionSpec(8, 4, num_kv_heads=2, softcap=1.0)


def scaled_gradient(name, factor=1.01):
    def wrong_vjp(*args):
        grads = oracle.vjp(*args)
        grads[name] = grads[name] * factor
        return grads
    return wrong_vjp


@pytest.mark.parametrize("name", ["query", "key", "value", "wq", "wv", "wo", "bq", "bv", "bo"])
def test_checker_catches_one_gradient_off_by_one_percent(name):
    with pytest.raises(AssertionError, match=rf"\n  {name}: worst at"):
        run_case(MUTANT_SPEC, 3, 4, vjp=scaled_gradient(name))


def test_checker_catches_a_missing_group_sum(monkeypatch):
    # Each key/value head keeps the gradient of the first query head of its group only.
    monkeypatch.setattr(oracle, "_sum_groups", lambda x, group_size: x[:, ::group_size])
    with pytest.raises(AssertionError, match=r"\n  key: worst at(.|\n)*\n  value: worst at"):
        run_case(MUTANT_SPEC, 3, 4)


def test_checker_catches_a_dropped_softcap_derivative(monkeypatch):
    # The forward is untouched; the backward no longer sees tanh, so it skips 1 - tanh^2.
    real_forward = oracle._forward
    monkeypatch.setattr(oracle, "_forward", lambda *args: real_forward(*args)._replace(tanh=None))
    with pytest.raises(AssertionError, match=r"\n  query: worst at"):
        run_case(MUTANT_SPEC, 3, 4)
