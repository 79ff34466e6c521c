"""RoPE and decoding on our layers and the built-ins that take them (issue 13): every RoPE
and decode case of the default profile judged by the gate against the oracle, in every
dtype it runs; the built-ins that have no rotary positions decline those cases, saying so;
and the shared RoPE step of each framework against the oracle's rotation."""

from __future__ import annotations

import numpy as np
import pytest

from attnsuite.conformance.cases import catalog
from attnsuite.conformance.runner import check
from attnsuite.impls import oracle
from attnsuite.impls.spec import AttentionSpec as S
from tests.conftest import require

# Ours in every framework, and the built-ins that are canonical projections + a kernel.
TAKE_ROPE = ["torch.explicit", "torch.fused", "tensorflow.explicit", "tensorflow.fused",
             "jax.explicit", "jax.fused", "torch.sdpa", "jax.nn.dot_product_attention"]
DECODE = TAKE_ROPE[:6]   # ours; the two built-ins declare no decoding
# One per adapter module that has no rotary positions (keras' check is the same on each
# backend). equinox composes its own RotaryPositionalEmbedding (tests/test_ecosystem_builtin.py).
DECLINE_ROPE = ["torch.nn.MultiheadAttention", "keras.tensorflow.MultiHeadAttention",
                "flax.linen.MultiHeadDotProductAttention", "flax.nnx.MultiHeadAttention",
                "haiku.MultiHeadAttention", "transformers.BertSelfAttention.sdpa"]
# jax.nn.dot_product_attention runs its softmax in float32 whatever the input dtype (its
# known finding, README "What the built-ins really do"): float64 is only float32-accurate.
FLOAT32_SOFTMAX = {"jax.nn.dot_product_attention"}

ROPE_OR_DECODE = ["*rope*", "*decode*"]


def test_the_default_profile_has_rope_and_decode_cases_of_each_kind():
    cases = [c for c in catalog("default") if "rope" in c.tags or "decode" in c.tags]
    rope = [c for c in cases if "rope" in c.tags and "decode" not in c.tags]
    decode = [c for c in cases if "decode" in c.tags]
    assert {"rope_half", "rope_interleaved", "rope_partial"} <= {t for c in rope for t in c.tags}
    assert {"lq_lt_lk", "lq_gt_lk", "causal_bottom_right", "gqa", "mqa"} <= {t for c in rope for t in c.tags}
    assert {c.form for c in rope} == {"qkv", "kv", "self"}
    assert {c.dtype for c in rope} >= {"float64", "float32", "float16", "bfloat16"}
    assert any("rope" not in c.tags for c in decode) and any("rope" in c.tags for c in decode)
    assert any("window" in c.tags for c in decode) and any("gqa" in c.tags for c in decode)
    assert any("window" in c.tags and "rope" not in c.tags for c in decode)


# JAX compiles a program per case and dtype: our two JAX layers over every dtype take about
# two minutes here, so the default run judges them in float32 and bfloat16 and `-m slow`
# in all four; the others are judged in every dtype in both.
JAX_OURS = ["jax.explicit", "jax.fused"]
JAX_QUICK_DTYPES = ["float32", "bfloat16"]


def _judge(names, dtypes=None):
    run = check(names, profile="default", dtypes=dtypes, case_filter=ROPE_OR_DECODE, diagnose=False)
    return {impl.name: impl for impl in run.implementations}


@pytest.fixture(scope="module")
def judged(request):
    others = [n for n in TAKE_ROPE if n not in JAX_OURS]
    every_dtype = request.config.getoption("-m") == "slow"
    return {**_judge(others), **_judge(JAX_OURS, None if every_dtype else JAX_QUICK_DTYPES)}


@pytest.mark.parametrize("name", TAKE_ROPE)
def test_every_rope_and_decode_case_passes_in_every_dtype(name, judged):
    results = judged[name].results
    if name in FLOAT32_SOFTMAX:
        assert all(r.status == "fail" and "float64" in r.tags for r in judged[name].failures())
        results = [r for r in results if "float64" not in r.tags]
    unsupported = [r for r in results if r.status == "unsupported"]
    if name in DECODE:
        assert not unsupported, [f"{r.case_id} {r.check}: {r.message}" for r in unsupported]
    else:   # declared no decoding; else only a feature of the built-in's own, never RoPE
        assert all(r.status == "unsupported" for r in results if r.check == "decode")
        assert not any("rotary" in r.message for r in unsupported), {r.message for r in unsupported}
    bad = [f"{r.case_id} {r.check}: {r.status} {r.message[:200]}" for r in results
           if r.status not in ("pass", "unsupported")]
    assert not bad, bad
    passed = [r for r in results if r.status == "pass"]
    judged_dtypes = {r.tags[-1] for r in results}   # a case's last tag is its dtype
    rope_dtypes = {c.dtype for c in catalog("default") if "rope" in c.tags} & judged_dtypes - (
        {"float64"} if name in FLOAT32_SOFTMAX else set())
    assert rope_dtypes <= {t for r in passed if "rope" in r.tags for t in r.tags}
    assert {"output", "grad.query", "grad.wq", "grad.wk"} <= {r.check for r in passed if "rope" in r.tags}
    if name in DECODE:
        assert {"rope", "window", "gqa"} <= {t for r in passed if r.check == "decode" for t in r.tags}


def test_the_layers_without_rotary_positions_decline_the_rope_cases():
    run = check(DECLINE_ROPE, profile="default", dtypes=["float32"], case_filter="*rope*",
                diagnose=False)
    for impl in run.implementations:
        # Never judged, so never computed without the rotation; the first reason that
        # applies is given, so a case may be declined for another feature first.
        rope = [r for r in impl.results if "rope" in r.tags]
        assert rope and all(r.status == "unsupported" for r in rope), impl.name
        assert any("no rotary positions" in r.message for r in rope), (impl.name, {r.message for r in rope})


# ---------------------------------------------------------------------------------------
# The shared step (attnsuite.impls.ops.<framework>.rope) on its own.

SPECS = [S(16, 2, rope={"style": "half"}),
         S(24, 2, rope={"style": "interleaved", "rotary_dim": 6, "theta": 500.0})]


def _heads_layout(framework: str, x: np.ndarray) -> np.ndarray:
    """(B, heads, L, d) -> the framework's layout."""
    return x if framework == "torch" else x.transpose(0, 2, 1, 3)


@pytest.mark.parametrize("framework", ["torch", "tensorflow", "jax"])
@pytest.mark.parametrize("spec", SPECS, ids=["half", "interleaved_partial"])
def test_the_ops_step_is_the_oracles_rotation_at_any_positions(framework, spec):
    backend = require(framework)
    import importlib
    ops = importlib.import_module(f"attnsuite.impls.ops.{framework}")
    x = np.random.default_rng(0).standard_normal((2, spec.H, 5, spec.d_k))
    positions = np.array([7, 3, 0, -2, 40])
    expected = oracle.rotate(spec, x, oracle.rope_angles(spec, positions))
    got = ops.rope(spec, backend.tensor(_heads_layout(framework, x), "float64"), positions)
    np.testing.assert_allclose(_heads_layout(framework, backend.to_numpy(got)), expected, atol=1e-13)
    # Features past rotary_dim pass unchanged; no RoPE in the spec: x itself.
    np.testing.assert_array_equal(expected[..., spec.rotary_dim:], x[..., spec.rotary_dim:])
    plain = backend.tensor(_heads_layout(framework, x), "float64")
    assert ops.rope(spec.replace(rope=None), plain, positions) is plain


# ---------------------------------------------------------------------------------------
# Gradients through the cache: the decoding steps of ours, differentiated together, give
# the gradients of the full causal pass (the gate's decode check compares outputs only).

DECODED = S(16, 4, num_kv_heads=2, kdim=12, vdim=10, causal="bottom_right", window=(3, 0),
            rope={"style": "interleaved", "rotary_dim": 2, "theta": 100.0})


def _decoded_loss(fn, params, query, key, value, d_out, concat):
    """sum(out * d_out) over every step of a decode of the whole sequence."""
    from attnsuite.conformance.decode import decode_chunks

    cache, total = fn.init_cache(params, query.shape[0]), 0.0
    for start, stop in decode_chunks(query.shape[1]):
        out, cache = fn.decode(params, cache, query[:, start:stop], key[:, start:stop],
                               value[:, start:stop])
        total = total + concat(out * d_out[:, start:stop])
    return total


def _gradients(framework, fn, weights, inputs):
    """Gradients of the decoded loss for every weight and query/key/value, as NumPy."""
    backend = require(framework)
    names = ["query", "key", "value"]
    params = backend.params(weights, "float64")
    tensors = [backend.tensor(inputs[n], "float64") for n in names]
    d_out = backend.tensor(inputs["d_out"], "float64")
    if framework == "torch":
        for t in [*params.values(), *tensors]:
            t.requires_grad_(True)
        _decoded_loss(fn, params, *tensors, d_out, lambda t: t.sum()).backward()
        found = {**{n: p.grad for n, p in params.items()}, **dict(zip(names, (t.grad for t in tensors)))}
    elif framework == "jax":
        import jax

        def loss(params, *tensors):
            return _decoded_loss(fn, params, *tensors, d_out, lambda t: t.sum())
        d_params, *d_inputs = jax.grad(loss, argnums=(0, 1, 2, 3))(params, *tensors)
        found = {**d_params, **dict(zip(names, d_inputs))}
    else:
        import tensorflow as tf
        with tf.GradientTape() as tape:
            tape.watch([*params.values(), *tensors])
            loss = _decoded_loss(fn, params, *tensors, d_out, tf.reduce_sum)
        found = dict(zip([*params, *names], tape.gradient(loss, [*params.values(), *tensors])))
    return {n: backend.to_numpy(g) for n, g in found.items()}


@pytest.mark.parametrize("framework", ["torch", "tensorflow", "jax"])
@pytest.mark.parametrize("path", ["explicit", "fused"])
def test_gradients_flow_through_the_cache(framework, path):
    import importlib

    from attnsuite.impls.weights import init_weights
    from tests.conftest import make_inputs

    require(framework)
    fn = getattr(importlib.import_module(f"attnsuite.impls.ours.{framework}"), path)(DECODED)
    weights, inputs = init_weights(DECODED, seed=3), make_inputs(DECODED, B=2, L_q=7, seed=3)
    expected = oracle.vjp(DECODED, weights, inputs["query"], inputs["key"], inputs["value"],
                          inputs["d_out"])
    found = _gradients(framework, fn, weights, inputs)
    assert set(found) == set(expected)
    for name, grad in expected.items():
        np.testing.assert_allclose(found[name], grad, rtol=1e-9, atol=1e-11, err_msg=name)
