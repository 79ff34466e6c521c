"""What only the JAX adapter (impls/backends/jax.py) promises; the shared contract is
checked for every framework in tests/test_backends.py."""

from __future__ import annotations

import numpy as np

from conftest import require

jb = require("jax")
import jax.numpy as jnp  # noqa: E402  (after the skip)

RNG = np.random.default_rng(0)
X, Y, Z = (RNG.standard_normal((2, 3, 4)) for _ in range(3))
D_OUT = RNG.standard_normal((2, 3, 5))
WEIGHTS = {"w": RNG.standard_normal((4, 5)), "b": RNG.standard_normal(5)}


def test_vjp_accepts_an_fn_that_returns_another_dtype():
    # jax.vjp wants the cotangent in the output's dtype: the adapter casts d_out to it.
    def upcast(params, query, key, value, mask=None, bias=None):
        return ((query * key + value) @ params["w"] + params["b"]).astype(jnp.float32)

    _, grads = jb.forward_and_vjp(upcast, WEIGHTS, X, Y, Z, D_OUT, dtype="float64")
    np.testing.assert_allclose(grads["value"], D_OUT @ WEIGHTS["w"].T, rtol=1e-5)
