"""What only the JAX adapter (impls/backends/jax.py) promises; the shared contract is
checked for every framework in tests/test_backends.py."""

from __future__ import annotations

import numpy as np

from conftest import require

jb = require("jax")
import jax  # noqa: E402  (after the skip)
import jax.numpy as jnp  # noqa: E402

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


def _attention_fn(params, query, key, value, mask=None, bias=None):
    # jax.nn.dot_product_attention asks XLA for float16 x float16 -> float32 dots, which the
    # CPU backend rejects in a compiled program; run op by op, JAX's attention retries
    # without the request.
    heads = lambda x: (x @ params["w"]).reshape(*x.shape[:2], 1, -1)  # noqa: E731
    out = jax.nn.dot_product_attention(heads(query), heads(key), heads(value))
    return out.reshape(*query.shape[:2], -1)


def _count_compiles(monkeypatch) -> list:
    import jax._src.compiler as compiler
    calls, compile_ = [], compiler.backend_compile_and_load
    monkeypatch.setattr(compiler, "backend_compile_and_load",
                        lambda *a, **k: calls.append(1) or compile_(*a, **k))
    return calls


def test_float16_attention_compiles_as_one_program_with_what_op_by_op_gives(monkeypatch):
    weights = {"w": WEIGHTS["w"]}
    eager = _attention_fn(jb.params(weights, "float16"), *(jb.tensor(a, "float16") for a in (X, Y, Z)))
    calls = _count_compiles(monkeypatch)
    out, grads = jb.forward_and_vjp(_attention_fn, weights, X, Y, Z, D_OUT, dtype="float16")
    assert len(calls) == 1              # op by op it is a compile per primitive: dozens
    np.testing.assert_allclose(out, jb.to_numpy(eager), rtol=2e-3, atol=2e-3)
    assert set(grads) == {"w", "query", "key", "value"}
    assert all(np.isfinite(g).all() and np.abs(g).max() > 0 for g in grads.values())


def test_only_the_dot_algorithms_the_device_rejects_are_dropped():
    from jax import lax

    def dots(a, b):
        return (lax.dot(a, b, precision=lax.DotAlgorithmPreset.F16_F16_F32),
                lax.dot(a, b, precision=lax.DotAlgorithmPreset.BF16_BF16_F32))

    operand = jnp.ones((2, 2), jnp.float16)
    jaxpr = jax.make_jaxpr(jax.jit(dots))(operand, operand).jaxpr     # the dots sit in a sub-program
    rewritten = jb._without_rejected_algorithms(jaxpr, "cpu")
    inner = [e for e in rewritten.eqns[0].params["jaxpr"].jaxpr.eqns if e.primitive.name == "dot_general"]
    assert [e.params["precision"] for e in inner] == [None, lax.DotAlgorithmPreset.BF16_BF16_F32]
    assert jb._without_rejected_algorithms(rewritten, "cpu") is rewritten   # nothing left to drop
