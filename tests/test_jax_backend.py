"""The JAX adapter (impls/backends/jax.py): dtypes, devices, conversions, and that
forward / forward_and_vjp hand fn what the contract says and return jax.vjp's gradients.

The fns here are tiny closed-form functions with hand-written gradients, so a wrong
gradient plumbing (a swapped name, a self-attention total not summed) cannot hide
behind attention's own numerics.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from conftest import require
from impls.errors import Unsupported

jb = require("jax")
import jax  # noqa: E402  (after the skip)
import jax.numpy as jnp  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 3, 4))
Y = RNG.standard_normal((2, 3, 4))
Z = RNG.standard_normal((2, 3, 4))
D_OUT = RNG.standard_normal((2, 3, 5))
WEIGHTS = {"w": RNG.standard_normal((4, 5)), "b": RNG.standard_normal(5)}


def bilinear(params, query, key, value, mask=None, bias=None):
    """out = (query * key + value) @ w + b: every gradient has a closed form."""
    return (query * key + value) @ params["w"] + params["b"]


def test_cpu_runs_all_four_dtypes_and_others_are_unsupported():
    assert "cpu" in jb.devices()
    assert jb.dtypes("cpu") == ["float64", "float32", "float16", "bfloat16"]
    with pytest.raises(Unsupported, match="float8"):
        jb.tensor(X, "float8")
    with pytest.raises(Unsupported, match="tpu"):
        jb.tensor(X, "float32", "tpu")
    if "gpu" not in jb.devices():
        with pytest.raises(Unsupported, match="gpu"):
            jb.dtypes("gpu")


@pytest.mark.parametrize("dtype, numpy_dtype", [("float64", np.float64), ("float32", np.float32),
                                                ("float16", np.float16),
                                                ("bfloat16", ml_dtypes.bfloat16)])
def test_tensor_has_the_dtype_and_to_numpy_gives_float64(dtype, numpy_dtype):
    t = jb.tensor(X, dtype)
    assert isinstance(t, jax.Array) and t.dtype == jnp.dtype(dtype), f"{dtype}: got {t.dtype}"
    assert t.devices() == {jax.devices("cpu")[0]}
    back = jb.to_numpy(t)
    assert back.dtype == np.float64, dtype
    # Exactly the dtype's rounding of the input: float64 survives x64 untouched.
    np.testing.assert_array_equal(back, X.astype(numpy_dtype).astype(np.float32).astype(np.float64)
                                  if dtype != "float64" else X, err_msg=dtype)


def test_bool_stays_bool():
    mask = RNG.random((3, 3)) > 0.5
    t = jb.tensor(mask, "bfloat16")
    assert t.dtype == jnp.bool_
    np.testing.assert_array_equal(jb.to_numpy(t), mask)


def test_forward_passes_mask_bias_and_training_only_when_training():
    seen = []

    def fn(params, query, key, value, mask=None, bias=None, **kwargs):
        seen.append({"mask": mask, "bias": bias, **kwargs})
        return bilinear(params, query, key, value)

    mask, bias = RNG.random((3, 3)) > 0.5, RNG.standard_normal((3, 3))
    out = jb.forward(fn, WEIGHTS, X, Y, Z, mask, bias, dtype="float64")
    jb.forward(fn, WEIGHTS, X, Y, Z, dtype="float32", training=True, seed=7)
    np.testing.assert_allclose(out, (X * Y + Z) @ WEIGHTS["w"] + WEIGHTS["b"], rtol=1e-14)
    assert set(seen[0]) == {"mask", "bias"}, "inference passed training/seed"
    np.testing.assert_array_equal(np.asarray(seen[0]["mask"]), mask)
    assert seen[0]["bias"].dtype == jnp.float64
    assert seen[1]["training"] is True and seen[1]["seed"] == 7, seen[1]


def test_forward_and_vjp_gives_every_gradient():
    out, grads = jb.forward_and_vjp(bilinear, WEIGHTS, X, Y, Z, D_OUT, dtype="float64")
    d_u = D_OUT @ WEIGHTS["w"].T                                   # d(query * key + value)
    want = {
        "w": np.einsum("bli,blo->io", X * Y + Z, D_OUT),
        "b": D_OUT.sum(axis=(0, 1)),
        "query": d_u * Y,
        "key": d_u * X,
        "value": d_u,
    }
    np.testing.assert_allclose(out, (X * Y + Z) @ WEIGHTS["w"] + WEIGHTS["b"], rtol=1e-14)
    assert set(grads) == set(want)
    for name, g in grads.items():
        assert g.dtype == np.float64, name
        np.testing.assert_allclose(g, want[name], rtol=1e-12, atol=1e-12, err_msg=f"d{name}")


def test_self_attention_passes_one_tensor_and_sums_its_gradient():
    _, grads = jb.forward_and_vjp(bilinear, WEIGHTS, X, None, None, D_OUT, dtype="float64",
                                  self_attention=True)
    d_u = D_OUT @ WEIGHTS["w"].T
    assert set(grads) == {"w", "b", "query"}, sorted(grads)
    # out = (x * x + x) @ w + b, so d/dx = d_u * (2x + 1).
    np.testing.assert_allclose(grads["query"], d_u * (2 * X + 1), rtol=1e-12, atol=1e-12)


def test_vjp_accepts_an_fn_that_returns_another_dtype():
    def upcast(params, query, key, value, mask=None, bias=None):
        return bilinear(params, query, key, value).astype(jnp.float32)

    out, grads = jb.forward_and_vjp(upcast, WEIGHTS, X, Y, Z, D_OUT, dtype="float64")
    np.testing.assert_allclose(grads["value"], D_OUT @ WEIGHTS["w"].T, rtol=1e-5)


def test_block_until_ready_returns_the_result():
    t = jb.tensor(X, "float32")
    assert jb.block_until_ready(t) is t
    tree = {"a": t, "b": [t]}
    assert jb.block_until_ready(tree) is tree
