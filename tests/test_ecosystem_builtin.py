"""The ecosystem's JAX layers as built-ins: ``equinox.nn.MultiheadAttention``
(impls/builtin/equinox.py) and haiku's ``hk.MultiHeadAttention`` (impls/builtin/haiku.py),
with their weight converters (impls/convert/{equinox,haiku}.py).

The converters follow each library's own layout (checked against freshly built layers)
and are exact both ways; a layer loaded through them, called as a user calls it, computes
the oracle's attention. The adapters agree with the oracle through the backend (causal,
windows and masks through the layer's mask, built by ``attnsuite.visible_mask``), refuse
what the layer cannot express, and a missing library is a reason, not a crash.

Observed here (equinox 0.13, haiku 0.0.17), asserted below on the layers themselves:
- both are float64-accurate (float64 stays float64 end to end);
- a query row with no visible key gets the plain mean of the values: both fill hidden
  logits with a large finite negative (equinox ``finfo(dtype).min``, haiku -1e30), so its
  softmax is uniform; except haiku in float16, where -1e30 overflows to -inf and the row
  is NaN;
- equinox's ``RotaryPositionalEmbedding`` (composed through ``process_heads``, as its docs
  show) is the oracle's half-style RoPE for L_q == L_k, but it rotates every sequence from
  position 0 (queries are not end-aligned when L_q < L_k), and its cos/sin table is cached
  per (size, dtype) for the whole process, not per theta: a second theta silently gets the
  first one's table.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import make_inputs, require
from feature_cases import TOL, assert_close, assert_grads_close
from attnsuite.impls import AttentionSpec, init_weights, oracle
from attnsuite.impls.calling import inputs_of
from attnsuite.impls.errors import Unsupported

jb = require("jax")
eqx = pytest.importorskip("equinox", reason="equinox is not installed: pip install 'attnsuite[ecosystem]'")
hk = pytest.importorskip("haiku", reason="dm-haiku is not installed: pip install 'attnsuite[ecosystem]'")
import jax  # noqa: E402  (after the skips)
import jax.numpy as jnp  # noqa: E402

from attnsuite.conformance.runner import check  # noqa: E402
from attnsuite.impls.builtin import equinox as builtin_eqx  # noqa: E402
from attnsuite.impls.builtin import haiku as builtin_hk  # noqa: E402
from attnsuite.impls.convert import equinox as convert_eqx  # noqa: E402
from attnsuite.impls.convert import haiku as convert_hk  # noqa: E402

S = AttentionSpec
B, L_Q, L_K = 2, 4, 6
FACTORIES = {builtin_eqx.NAME: builtin_eqx.multihead_attention,
             builtin_hk.NAME: builtin_hk.multi_head_attention}
LIBRARIES = {builtin_eqx.NAME: "equinox", builtin_hk.NAME: "haiku"}
# Every size option both layers have, and the rules they take through their mask.
SPECS = [S(8, 2, kdim=5, vdim=7, out_dim=6, head_dim=3, value_head_dim=4, causal="bottom_right",
           window=(2, 1)),
         S(8, 4, bias=False, causal="top_left"),
         S(6, 3)]
UNSUPPORTED = [(S(8, 4, num_kv_heads=2), "grouped-query"), (S(8, 2, scale=0.3), "scale"),
               (S(8, 2, softcap=5.0), "softcap")]


def inputs(spec: AttentionSpec, seed: int = 0, mask_shape=(B, 1, L_Q, L_K)):
    a = make_inputs(spec, B, L_Q, L_K, seed=seed)
    mask = np.random.default_rng(seed).random(mask_shape) > 0.3
    # Every row keeps a key its causal/window rule allows: no empty-row question here.
    mask[..., np.arange(L_Q), oracle.structural_mask(spec, L_Q, L_K).argmax(-1)] = True
    return init_weights(spec, seed), a["query"], a["key"], a["value"], a["d_out"], mask


# ---------------------------------------------------------------------------------------
# Converters.

def equinox_layer(spec, seed: int = 0):
    return eqx.nn.MultiheadAttention(
        num_heads=spec.H, query_size=spec.E, key_size=spec.E_k, value_size=spec.E_v,
        output_size=spec.E_o, qk_size=spec.d_k, vo_size=spec.d_v, use_query_bias=spec.bias,
        use_key_bias=spec.bias, use_value_bias=spec.bias, use_output_bias=spec.bias,
        key=jax.random.key(seed))


def haiku_params(spec, seed: int = 0):
    q, k, v = (jnp.ones((1, n, e)) for n, e in ((L_Q, spec.E), (L_K, spec.E_k), (L_K, spec.E_v)))
    return builtin_hk.transformed(spec).init(jax.random.key(seed), q, k, v)


def assert_same_weights(where: str, got: dict, want: dict) -> None:
    assert list(got) == list(want), f"{where}: names {list(got)}, expected {list(want)}"
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=f"{where}: {name}")


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_equinox_conversion_is_exact_both_ways(spec):
    w = init_weights(spec, seed=1)
    layer = convert_eqx.to_equinox(spec, w, equinox_layer(spec))
    assert_same_weights(f"equinox {spec}", convert_eqx.from_equinox(spec, layer), w)
    own = equinox_layer(spec, seed=5)                     # the layer's own initial weights
    back = convert_eqx.to_equinox(spec, convert_eqx.from_equinox(spec, own), equinox_layer(spec))
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(own), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"equinox {spec}")


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_haiku_layout_is_haikus_and_conversion_is_exact_both_ways(spec):
    own = haiku_params(spec, seed=5)
    w = init_weights(spec, seed=1)
    converted = convert_hk.to_haiku(spec, w)
    assert jax.tree.map(np.shape, converted) == jax.tree.map(np.shape, own), f"{spec}: layout"
    assert_same_weights(f"haiku {spec}", convert_hk.from_haiku(spec, converted), w)
    back = convert_hk.to_haiku(spec, convert_hk.from_haiku(spec, own))
    assert jax.tree.structure(back) == jax.tree.structure(own)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(own)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"haiku {spec}")


@pytest.mark.parametrize("convert", [
    lambda spec, w: convert_eqx.to_equinox(spec, w, equinox_layer(spec)),
    lambda spec, w: convert_hk.to_haiku(spec, w)], ids=["equinox", "haiku"])
def test_converters_name_a_misshapen_weight(convert):
    spec = S(8, 2)
    w = init_weights(spec)
    w["wk"] = w["wk"][:, :6]
    with pytest.raises(ValueError, match="wk"):
        convert(spec, w)


def test_from_converters_name_a_missing_leaf():
    spec = S(8, 2)
    with pytest.raises(ValueError, match="query_proj.bias: .* got None"):
        convert_eqx.from_equinox(spec, equinox_layer(S(8, 2, bias=False)))
    params = haiku_params(spec)
    del params["multi_head_attention/linear"]["b"]
    with pytest.raises(ValueError, match="linear/b"):
        convert_hk.from_haiku(spec, params)


# ---------------------------------------------------------------------------------------
# The layers themselves, loaded through the converters and called as a user calls them.

def call_equinox(spec, w, q, k, v, mask, dtype):
    """vmap over the batch, a per-example (L_q, L_k) mask; no suite code but the converter."""
    cast = jax.tree.map(lambda a: jnp.asarray(a, dtype), w)
    layer = convert_eqx.to_equinox(spec, cast, equinox_layer(spec))
    masks = jnp.broadcast_to(jnp.asarray(mask), (B, L_Q, L_K))
    return jax.vmap(layer)(*(jnp.asarray(x, dtype) for x in (q, k, v)), masks)


def call_haiku(spec, w, q, k, v, mask, dtype):
    params = convert_hk.to_haiku(spec, jax.tree.map(lambda a: jnp.asarray(a, dtype), w))
    return builtin_hk.transformed(spec).apply(params, None, *(jnp.asarray(x, dtype) for x in (q, k, v)),
                                              jnp.asarray(mask)[None, None])


USER_CALLS = {builtin_eqx.NAME: call_equinox, builtin_hk.NAME: call_haiku}


@pytest.mark.parametrize("name", list(USER_CALLS))
def test_layer_loaded_through_the_converter_is_float64_accurate(name):
    spec = SPECS[0].replace(causal=None, window=None)
    w, q, k, v, _, _ = inputs(spec)
    mask = np.tril(np.ones((L_Q, L_K), bool), 1)
    out = np.asarray(USER_CALLS[name](spec, w, q, k, v, mask, jnp.float64))
    want = oracle.forward(spec, w, q, k, v, mask)
    assert_close(f"{name} float64", out, want, TOL["float64"])


@pytest.mark.parametrize("name, dtype, observed", [
    (builtin_eqx.NAME, jnp.float32, "uniform"), (builtin_eqx.NAME, jnp.float16, "uniform"),
    (builtin_hk.NAME, jnp.float32, "uniform"), (builtin_hk.NAME, jnp.bfloat16, "uniform"),
    (builtin_hk.NAME, jnp.float16, "nan")])
def test_a_row_with_no_visible_key_is_as_documented(name, dtype, observed):
    spec = S(8, 2)
    w, q, k, v, _, _ = inputs(spec)
    mask = np.ones((L_Q, L_K), bool)
    mask[1] = False                                   # query row 1 sees no key
    row = np.asarray(USER_CALLS[name](spec, w, q, k, v, mask, dtype)[:, 1], np.float64)
    values = v @ w["wv"] + w["bv"]
    uniform = values.mean(axis=1) @ w["wo"] + w["bo"]  # every head: the mean of its values
    if observed == "nan":
        assert np.isnan(row).all(), f"{name} {dtype.__name__}: the empty row is {row}"
    else:
        np.testing.assert_allclose(row, uniform, rtol=2e-2, atol=2e-2,
                                   err_msg=f"{name} {dtype.__name__}: not the mean of the values")
        assert not np.allclose(row, w["bo"], atol=1e-2), f"{name}: the row is zeros (the spec's rule)"


# ---------------------------------------------------------------------------------------
# The adapters.

@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("mask_shape", [None, (L_Q, L_K), (B, 1, L_Q, L_K), (B, "H", L_Q, L_K)],
                         ids=["no-mask", "rank2", "rank4", "rank4-per-head"])
def test_adapter_matches_oracle_in_float64(name, spec, mask_shape):
    shape = mask_shape and tuple(spec.H if d == "H" else d for d in mask_shape)
    w, q, k, v, d_out, mask = inputs(spec, mask_shape=shape or (L_Q, L_K))
    mask = mask if shape else None
    out, grads = jb.forward_and_vjp(FACTORIES[name](spec), w, q, k, v, d_out, mask, dtype="float64")
    assert_close(f"{name} {spec} out", out, oracle.forward(spec, w, q, k, v, mask), TOL["float64"])
    assert_grads_close(f"{name} {spec}", grads, oracle.vjp(spec, w, q, k, v, d_out, mask),
                       TOL["float64"])


@pytest.mark.parametrize("name", list(FACTORIES))
def test_adapter_passes_the_gate_on_a_few_cases(name):
    """Through the suite's own runner, in process: the causal and window cases in float32."""
    result = check([name], profile="default", dtypes=["float32"],
                   case_filter=lambda case: case.spec.causal is not None or case.spec.window is not None)
    impl = result.implementations[0]
    assert impl.verdict == "pass", f"{name}: {impl.verdict} {impl.reason}"
    judged = [r for r in impl.results if r.status != "unsupported"]
    assert judged, f"{name}: nothing judged"
    failed = [r for r in judged if r.status != "pass"]
    assert not failed, f"{name}: {failed[0].case_id} {failed[0].check}: {failed[0].message}"


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("spec, why", UNSUPPORTED, ids=lambda x: str(x))
def test_refuses_what_the_layer_cannot_express(name, spec, why):
    with pytest.raises(Unsupported, match=f"{name}: .*{why.split('-')[0]}"):
        FACTORIES[name](spec)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_refuses_an_additive_bias(name):
    spec = SPECS[2]
    w, q, k, v, _, _ = inputs(spec)
    with pytest.raises(Unsupported, match="bias"):
        jb.forward(FACTORIES[name](spec), w, q, k, v, bias=np.zeros((L_Q, L_K)), dtype="float32")
    assert not inputs_of(FACTORIES[name]).bias   # declared: the gate declines it up front


def test_equinox_dropout_is_seeded_and_only_in_training():
    spec = SPECS[2].replace(dropout=0.5)
    w, q, k, v, _, mask = inputs(spec)
    fn = builtin_eqx.multihead_attention(spec)

    def run(**kwargs):
        return jb.forward(fn, w, q, k, v, mask, dtype="float32", **kwargs)

    first, again, other = (run(training=True, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(first, again, err_msg="seed 0 twice")
    assert not np.allclose(first, other), "seeds 0 and 1 drop the same weights"
    assert_close("inference", run(), oracle.forward(spec, w, q, k, v, mask), TOL["float32"])


def test_haiku_has_no_dropout():
    spec = SPECS[2].replace(dropout=0.5)
    w, q, k, v, _, _ = inputs(spec)
    fn = builtin_hk.multi_head_attention(spec)
    assert_close("inference", jb.forward(fn, w, q, k, v, dtype="float32"),
                 oracle.forward(spec, w, q, k, v), TOL["float32"])
    with pytest.raises(Unsupported, match="dropout"):
        jb.forward(fn, w, q, k, v, dtype="float32", training=True, seed=0)
    assert not inputs_of(builtin_hk.multi_head_attention).dropout   # declared too


@pytest.mark.parametrize("name", list(FACTORIES))
def test_a_missing_library_is_unsupported_naming_the_extra(name, monkeypatch):
    monkeypatch.setitem(sys.modules, LIBRARIES[name], None)   # import now raises ImportError
    with pytest.raises(Unsupported, match=rf"{LIBRARIES[name]} is not available.*attnsuite\[ecosystem\]"):
        FACTORIES[name](SPECS[2])


def _rotary(theta, x):
    return np.asarray(eqx.nn.RotaryPositionalEmbedding(x.shape[-1], theta=theta)(jnp.asarray(x)))


def test_equinox_rope_composed_through_process_heads_is_the_oracles_half_style():
    spec = S(16, 2, causal="bottom_right", rope={"style": "half"})
    query = make_inputs(spec, B, L_K, L_K, seed=4)["query"]
    w = init_weights(spec, seed=4)
    out = jb.forward(builtin_eqx.multihead_attention(spec), w, query, query, query, dtype="float64",
                     form="self")
    assert_close("output", out, oracle.forward(spec, w, query, query, query), TOL["float64"])
    plain = oracle.forward(spec.replace(rope=None), w, query, query, query)
    assert not np.allclose(out, plain, atol=1e-3), "RoPE made no difference"


def test_equinox_rope_starts_the_queries_at_position_0_not_end_aligned():
    spec = S(16, 2, rope={"style": "half"})
    query, key, value = (make_inputs(spec, B, L_Q, L_K, seed=4)[n] for n in ("query", "key", "value"))
    w = init_weights(spec, seed=4)
    out = jb.forward(builtin_eqx.multihead_attention(spec), w, query, key, value, dtype="float64")
    assert not np.allclose(out, oracle.forward(spec, w, query, key, value), atol=1e-3)
    x = np.random.default_rng(0).standard_normal((L_Q, 8))
    # Its rotation of L_Q tokens is the oracle's at positions 0 .. L_Q-1.
    s8 = S(8, 1, rope={"style": "half", "theta": 10000.0})
    expected = oracle.rotate(s8, x[None, None], oracle.rope_angles(s8, np.arange(L_Q)))[0, 0]
    np.testing.assert_allclose(_rotary(10000.0, x), expected, atol=1e-12)


def test_equinox_rope_table_is_cached_across_thetas():
    """Found by the gate (a theta=500 case failing after a theta=10000 one in the same
    worker); confirmed here on the module alone, in a fresh process."""
    import subprocess

    script = ("import numpy as np, jax, jax.numpy as jnp, equinox as eqx;"
              "jax.config.update('jax_enable_x64', True);"
              "x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 8)));"
              "alone = eqx.nn.RotaryPositionalEmbedding(8, theta=500.0)(x);"
              "eqx.clear_caches();"
              "first = eqx.nn.RotaryPositionalEmbedding(8, theta=10000.0)(x);"
              "second = eqx.nn.RotaryPositionalEmbedding(8, theta=500.0)(x);"
              "print(bool(jnp.allclose(second, first)), bool(jnp.allclose(second, alone)))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    same_as_other_theta, same_as_own = out.stdout.split()
    assert same_as_other_theta == "True" and same_as_own == "False", out.stdout
