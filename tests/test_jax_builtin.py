"""The JAX built-ins (impls/builtin/jax.py, impls/builtin/flax.py): each agrees with the
oracle on a spec it supports, refuses what it cannot express, and shows its own
behaviour where the spec and the framework disagree (fully masked rows, float64).

Observed here (jax 0.10, flax 0.12), each asserted below from the layer's output:
- a query row with no visible key gets the plain mean of the values in all three (the
  masked logits become one large finite negative number, so softmax is uniform);
- ``jax.nn.dot_product_attention`` runs its softmax in float32, so its float64 results
  are only float32-accurate; ``nnx.MultiHeadAttention`` calls it (when it has no dropout
  rate), and inherits that. linen keeps float64 throughout.
"""

from __future__ import annotations

import numpy as np
import pytest

from attnsuite.bench.case import build
from attnsuite.bench.sweeps import Config
from conftest import make_inputs, require
from feature_cases import TOL, assert_close, assert_grads_close
from attnsuite.impls import AttentionSpec, init_weights, oracle, param_count
from attnsuite.impls.calling import inputs_of
from attnsuite.impls.errors import Unsupported

jb = require("jax")
from attnsuite.impls.builtin import flax as builtin_flax  # noqa: E402  (after the skip)
from attnsuite.impls.builtin import jax as builtin_jax  # noqa: E402

S = AttentionSpec
B, L_Q, L_K = 2, 4, 6
FACTORIES = {
    "jax.nn.dot_product_attention": builtin_jax.dot_product_attention,
    "flax.linen.MultiHeadDotProductAttention": builtin_flax.linen_mha,
    "flax.nnx.MultiHeadAttention": builtin_flax.nnx_mha,
}
# A spec each supports, using as many of its options as it has; and the dtype it is
# accurate in (see the module docstring).
SUPPORTED = {
    "jax.nn.dot_product_attention": (S(8, 4, num_kv_heads=2, kdim=5, vdim=7, out_dim=6, scale=0.7,
                                       causal="top_left", window=(2, 0)), "float32"),
    "flax.linen.MultiHeadDotProductAttention": (S(8, 2, kdim=5, vdim=7, out_dim=6, head_dim=3,
                                                  causal="top_left"), "float64"),
    "flax.nnx.MultiHeadAttention": (S(8, 4, num_kv_heads=2, kdim=6, vdim=6, bias=False,
                                      causal="top_left"), "float32"),
}
UNSUPPORTED = {
    "jax.nn.dot_product_attention": [S(8, 2, causal="bottom_right"), S(8, 2, softcap=5.0),
                                     S(8, 2, value_head_dim=3)],
    "flax.linen.MultiHeadDotProductAttention": [S(8, 4, num_kv_heads=2), S(8, 2, scale=0.3),
                                                S(8, 2, window=(1, 1)), S(8, 2, softcap=5.0),
                                                S(8, 2, causal="bottom_right"),
                                                S(8, 2, value_head_dim=3)],
    "flax.nnx.MultiHeadAttention": [S(8, 2, kdim=5, vdim=7), S(8, 2, scale=0.3),
                                    S(8, 2, window=(1, 1)), S(8, 2, softcap=5.0),
                                    S(8, 2, causal="bottom_right"), S(8, 2, value_head_dim=3)],
}


def inputs(spec: AttentionSpec, seed: int = 0):
    a = make_inputs(spec, B, L_Q, L_K, seed=seed)
    mask = np.random.default_rng(seed).random((B, 1, L_Q, L_K)) > 0.3
    mask[..., 0] = True                       # every row sees a key: no empty-row question
    return init_weights(spec, seed), a["query"], a["key"], a["value"], a["d_out"], mask


@pytest.mark.parametrize("name", list(FACTORIES))
def test_matches_oracle_on_a_supported_spec(name):
    spec, dtype = SUPPORTED[name]
    w, q, k, v, d_out, mask = inputs(spec)
    out, grads = jb.forward_and_vjp(FACTORIES[name](spec), w, q, k, v, d_out, mask, dtype=dtype)
    assert_close(f"{name} {spec} out", out, oracle.forward(spec, w, q, k, v, mask), TOL[dtype])
    assert_grads_close(f"{name} {spec}", grads, oracle.vjp(spec, w, q, k, v, d_out, mask),
                       TOL[dtype])


@pytest.mark.parametrize("name, float64_accurate", [
    ("jax.nn.dot_product_attention", False),
    ("flax.linen.MultiHeadDotProductAttention", True),
    ("flax.nnx.MultiHeadAttention", False),
])
def test_float64_accuracy_is_as_documented(name, float64_accurate):
    spec = SUPPORTED[name][0]
    w, q, k, v, _, mask = inputs(spec)
    out = jb.forward(FACTORIES[name](spec), w, q, k, v, mask, dtype="float64")
    want = oracle.forward(spec, w, q, k, v, mask)
    err = np.abs(out - want).max() / np.abs(want).max()
    assert (err < 1e-12) == float64_accurate, f"{name}: float64 relative error {err:.2e}"
    assert err < 1e-5, f"{name}: float64 relative error {err:.2e} is not even float32-level"


@pytest.mark.parametrize("name, spec", [(n, s) for n, specs in UNSUPPORTED.items() for s in specs],
                         ids=lambda x: str(x))
def test_refuses_what_it_cannot_express(name, spec):
    with pytest.raises(Unsupported, match=name.replace(".", r"\.")):
        FACTORIES[name](spec)


@pytest.mark.parametrize("name", ["flax.linen.MultiHeadDotProductAttention",
                                  "flax.nnx.MultiHeadAttention"])
def test_flax_layers_refuse_an_additive_bias(name):
    spec = SUPPORTED[name][0]
    w, q, k, v, _, _ = inputs(spec)
    with pytest.raises(Unsupported, match="bias"):
        jb.forward(FACTORIES[name](spec), w, q, k, v, bias=np.zeros((L_Q, L_K)), dtype="float32")
    assert not inputs_of(FACTORIES[name]).bias   # declared: the gate declines it up front


def fully_masked_row_class(spec, weights, key, value, row) -> str:
    """What the implementation put in a row with no visible key (out row ``row``)."""
    v = value @ weights["wv"] + (weights["bv"] if spec.bias else 0.0)
    means = v.mean(axis=1).reshape(B, spec.H_kv, spec.d_v)
    heads = np.repeat(means, spec.group_size, axis=1).reshape(B, spec.H * spec.d_v)
    bo = weights["bo"] if spec.bias else np.zeros(spec.E_o)
    candidates = {"zeros": np.broadcast_to(bo, row.shape), "uniform": heads @ weights["wo"] + bo}
    if not np.isfinite(row).all():
        return "nan"
    matches = [c for c, want in candidates.items() if np.allclose(row, want, rtol=1e-4, atol=1e-5)]
    return matches[0] if len(matches) == 1 else "other"


@pytest.mark.parametrize("name, observed", [("jax.nn.dot_product_attention", "uniform"),
                                            ("flax.linen.MultiHeadDotProductAttention", "uniform"),
                                            ("flax.nnx.MultiHeadAttention", "uniform")])
def test_fully_masked_row_behaviour_is_as_documented(name, observed):
    spec, dtype = SUPPORTED[name]
    w, q, k, v, _, mask = inputs(spec)
    mask[:, :, 1] = False                     # query row 1 sees nothing, in every batch
    out = jb.forward(FACTORIES[name](spec), w, q, k, v, mask, dtype=dtype)
    got = fully_masked_row_class(spec, w, k, v, out[:, 1])
    assert got == observed, f"{name}: a fully masked row now gives {got!r}, not {observed!r}"
    # The other rows are unaffected by the empty one.
    want = oracle.forward(spec, w, q, k, v, mask)
    assert_close(f"{name} visible rows", np.delete(out, 1, axis=1), np.delete(want, 1, axis=1),
                 TOL[dtype])


@pytest.mark.parametrize("name", ["flax.linen.MultiHeadDotProductAttention",
                                  "flax.nnx.MultiHeadAttention"])
def test_flax_dropout_is_seeded_and_only_in_training(name):
    spec = SUPPORTED[name][0].replace(dropout=0.5)
    w, q, k, v, _, mask = inputs(spec)
    fn = FACTORIES[name](spec)

    def run(**kwargs):
        return jb.forward(fn, w, q, k, v, mask, dtype="float32", **kwargs)

    first, again, other = (run(training=True, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(first, again, err_msg=f"{name}: seed 0 twice")
    assert not np.allclose(first, other), f"{name}: seeds 0 and 1 drop the same weights"
    assert_close(f"{name} inference", run(), oracle.forward(spec, w, q, k, v, mask),
                 TOL["float32"])


def test_jax_dot_product_attention_has_no_dropout():
    spec = SUPPORTED["jax.nn.dot_product_attention"][0].replace(dropout=0.5)
    w, q, k, v, _, _ = inputs(spec)
    fn = builtin_jax.dot_product_attention(spec)
    assert_close("inference", jb.forward(fn, w, q, k, v, dtype="float32"),
                 oracle.forward(spec, w, q, k, v), TOL["float32"])
    with pytest.raises(Unsupported, match="dropout"):
        jb.forward(fn, w, q, k, v, dtype="float32", training=True, seed=0)
    assert not inputs_of(builtin_jax.dot_product_attention).dropout   # declared too


@pytest.mark.parametrize("name, kv_heads", [("flax.nnx.MultiHeadAttention", 2),
                                            ("flax.nnx.MultiHeadAttention", 1),
                                            ("flax.linen.MultiHeadDotProductAttention", 2)])
def test_the_benchmark_counts_the_flax_layers_own_variables(name, kv_heads):
    """Counted from the layer (``fn.layer`` or the adapter's closure), not from the
    canonical params it is handed: a layer holding other weights would show."""
    config = Config(batch=1, L_q=8, L_k=8, d_model=16, heads=2, kv_heads=kv_heads,
                    dtype="float32", causal=False, device="cpu")
    count, source = build(name, config).count_params()
    assert (count, source) == (param_count(config.spec()), "layer"), f"{name} kv_heads={kv_heads}"


@pytest.mark.parametrize("name, spec", [
    ("flax.linen.MultiHeadDotProductAttention", S(8, 2, causal="top_left")),
    ("flax.nnx.MultiHeadAttention", S(12, 6, num_kv_heads=2, causal="top_left")),
])
def test_flax_decodes_in_its_decode_mode_past_its_first_cache_length(name, spec):
    """fn.decode through the layer's own decode=True cache, one token per call, row for row
    against the oracle's causal pass; the sequence outgrows the first cache (DECODE_CAPACITY),
    so the cache must grow without losing or shifting an entry."""
    import jax.numpy as jnp

    length = builtin_flax.DECODE_CAPACITY + 6
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, length, spec.E))
    w = init_weights(spec, seed=3)
    full = oracle.forward(spec, w, x, x, x)
    fn = FACTORIES[name](spec)
    params = {k: jnp.asarray(v, jnp.float32) for k, v in w.items()}
    cache = fn.init_cache(params, 2)
    bounds = [0, length - 9, length - 8, length - 3, length]
    for start, stop in zip(bounds, bounds[1:]):
        chunk = jnp.asarray(x[:, start:stop], jnp.float32)
        out, cache = fn.decode(params, cache, chunk, chunk, chunk)
        assert_close(f"tokens [{start}, {stop})", np.asarray(out), full[:, start:stop], TOL["float32"])
    assert cache["tokens"] == int(cache["layer"]["cache_index"]) == length
