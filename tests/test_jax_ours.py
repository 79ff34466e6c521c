"""Our JAX attention (impls/ours/jax.py), both paths, against the float64 oracle:
forward and every gradient, on every feature of the spec, in float64 and float32.

JAX compiles every operation once per shape (seconds per new shape on a small machine),
so the cases come in three families of shared sizes: changing causal, window, softcap,
scale, mask or bias within a family compiles almost nothing new.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import make_inputs, require
from impls import AttentionSpec, init_weights, oracle
from impls.weights import weight_shapes

jb = require("jax")
import jax  # noqa: E402  (after the skip)
import jax.numpy as jnp  # noqa: E402

from impls.ours import jax as ours  # noqa: E402

# Bound on max|got - oracle| relative to max|oracle| of the same tensor. float64 must be
# float64-accurate: a path that leaks float32 (errors near 1e-7) fails.
TOL = {"float64": 1e-10, "float32": 1e-4}
# Gradients that are zero in the math (softmax cancels the key bias) are judged against
# the scale of a sibling gradient instead of their own (which is rounding noise).
SCALE_OF = {"bk": "wk"}
PATHS = {"explicit": ours.explicit, "fused": ours.fused}
B = 2


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    spec: AttentionSpec
    L_q: int = 4
    L_k: int = 6
    mask: str | None = None      # None | "rank2" | "rank4" (each with an empty query row)
    bias: str | None = None      # None | "rank2" | "rank4"


S = AttentionSpec
# d_model 8, two heads, L_q 4 < L_k 6.
SMALL = S(8, 2)
# Grouped-query cross-attention with every size its own (d_v > d_k), L_q 6 > L_k 4.
GROUPED = S(8, 4, num_kv_heads=2, kdim=5, vdim=7, head_dim=3, value_head_dim=5, out_dim=6)
# Multi-query with d_v < d_k and no projection biases.
MULTI_QUERY = S(8, 4, num_kv_heads=1, head_dim=4, value_head_dim=2, bias=False)
CASES = [
    Case("plain", SMALL),
    Case("custom_scale", SMALL.replace(scale=0.9), mask="rank2"),
    Case("no_bias", SMALL.replace(bias=False), mask="rank4"),
    Case("top_left", SMALL.replace(causal="top_left"), mask="rank4"),
    Case("bottom_right", SMALL.replace(causal="bottom_right"), bias="rank2"),
    Case("window", SMALL.replace(window=(1, 2)), bias="rank4"),
    Case("top_left_window", SMALL.replace(causal="top_left", window=(1, 0))),
    Case("bottom_right_window", SMALL.replace(causal="bottom_right", window=(2, 0)), mask="rank2"),
    Case("softcap_before_bias_and_mask", SMALL.replace(softcap=1.0), mask="rank2", bias="rank4"),
    Case("grouped", GROUPED, 6, 4),
    Case("grouped_top_left_long_query", GROUPED.replace(causal="top_left", window=(3, 0)), 6, 4,
         mask="rank4", bias="rank4"),
    # bottom-right with L_q > L_k: the first two query rows see no key at all.
    Case("grouped_bottom_right_long_query", GROUPED.replace(causal="bottom_right", window=(2, 1),
                                                            softcap=2.0, scale=0.5), 6, 4,
         mask="rank4", bias="rank2"),
    Case("multi_query", MULTI_QUERY, mask="rank2"),
    Case("multi_query_causal_softcap", MULTI_QUERY.replace(causal="top_left", softcap=3.0),
         bias="rank4"),
]


def case_arrays(case: Case) -> dict:
    """Inputs, weights, and the mask/bias of ``case`` (seeded by its position)."""
    seed = CASES.index(case)
    rng = np.random.default_rng(100 + seed)
    arrays = make_inputs(case.spec, B, case.L_q, case.L_k, seed=seed)
    arrays["weights"] = init_weights(case.spec, seed=seed)
    H, L_q, L_k = case.spec.H, case.L_q, case.L_k
    arrays["mask"] = None
    if case.mask == "rank2":
        arrays["mask"] = rng.random((L_q, L_k)) > 0.3
        arrays["mask"][1] = False                   # query row 1 sees nothing, in every head
    elif case.mask == "rank4":
        arrays["mask"] = rng.random((B, H, L_q, L_k)) > 0.3
        arrays["mask"][0, :, 1] = False             # row 1 of batch 0, in every head
        arrays["mask"][1, H - 1, 2] = False         # row 2 of batch 1, in one head only
    arrays["bias"] = None
    if case.bias == "rank2":
        arrays["bias"] = rng.standard_normal((L_q, L_k))
    elif case.bias == "rank4":
        arrays["bias"] = rng.standard_normal((1, H, L_q, L_k))
    return arrays


def assert_close(what: str, got: np.ndarray, want: np.ndarray, tol: float, scale: float) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape}, oracle {want.shape}"
    bad = ~np.isfinite(got)
    assert not bad.any(), f"{what}: non-finite {got[bad][0]} at {tuple(np.argwhere(bad)[0])}"
    err = np.abs(got - want)
    worst = np.unravel_index(np.argmax(err), err.shape)
    assert err[worst] <= tol * scale, (
        f"{what}: worst element {worst}: got {got[worst]!r}, oracle {want[worst]!r}, "
        f"|err| {err[worst]:.3g} > bound {tol:g} * scale {scale:.3g}")


def count_calls(monkeypatch, module, name: str) -> list:
    """Replace ``module.name`` by a wrapper that records each call in the returned list."""
    calls, original = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_oracle(case, path, dtype, monkeypatch):
    kernel_calls = count_calls(monkeypatch, jax.nn, "dot_product_attention")
    a = case_arrays(case)
    w, q, k, v, d_out, mask, bias = (a[n] for n in ("weights", "query", "key", "value", "d_out",
                                                    "mask", "bias"))
    where = f"{case.id} [{path}, {dtype}]"
    want = oracle.forward(case.spec, w, q, k, v, mask, bias)
    want_grads = oracle.vjp(case.spec, w, q, k, v, d_out, mask, bias)
    out, grads = jb.forward_and_vjp(PATHS[path](case.spec), w, q, k, v, d_out, mask, bias,
                                    dtype=dtype)

    # The fused path falls back to the explicit core only where the kernel cannot do the
    # work: softcap, and float64 (the kernel's softmax is float32).
    runs_kernel = path == "fused" and case.spec.softcap is None and dtype != "float64"
    assert bool(kernel_calls) == runs_kernel, f"{where}: kernel called {len(kernel_calls)} times"
    assert_close(f"{where} out", out, want, TOL[dtype], np.abs(want).max())
    assert set(grads) == set(want_grads), where
    for name, g in grads.items():
        g_scale = np.abs(want_grads[SCALE_OF.get(name, name)]).max()
        assert_close(f"{where} d{name}", g, want_grads[name], TOL[dtype], g_scale)

    # A query row that sees no key in any head: out is bo, nothing flows back through it.
    empty = ~oracle.visibility(case.spec, B, case.L_q, case.L_k, mask).any(axis=-1).any(axis=1)
    if empty.any():
        assert not grads["query"][empty].any(), f"{where}: gradient through an empty query row"
        bo = w["bo"] if case.spec.bias else 0.0
        np.testing.assert_allclose(out[empty], np.broadcast_to(bo, out[empty].shape),
                                   rtol=TOL[dtype], atol=0, err_msg=f"{where}: empty row is not bo")


def test_every_case_that_should_have_an_empty_row_has_one():
    """Guards the empty-row assertions above against vacuity."""
    with_empty = {c.id for c in CASES
                  if (~oracle.visibility(c.spec, B, c.L_q, c.L_k, case_arrays(c)["mask"])
                      .any(axis=-1)).any()}
    expected = {c.id for c in CASES if c.mask is not None} | {"grouped_bottom_right_long_query"}
    assert expected <= with_empty, sorted(expected - with_empty)


@pytest.mark.parametrize("path", list(PATHS))
def test_self_attention_matches_oracle(path):
    spec = SMALL.replace(causal="top_left", softcap=3.0)
    a = make_inputs(spec, B, 6, seed=3)
    w = init_weights(spec, seed=3)
    x = a["query"]
    want_grads = oracle.vjp(spec, w, x, x, x, a["d_out"])
    want_total = want_grads["query"] + want_grads["key"] + want_grads["value"]
    out, grads = jb.forward_and_vjp(PATHS[path](spec), w, x, None, None, a["d_out"],
                                    dtype="float64", self_attention=True)
    want = oracle.forward(spec, w, x, x, x)
    assert "key" not in grads and "value" not in grads, sorted(grads)
    assert_close(f"{path} self-attention out", out, want, TOL["float64"], np.abs(want).max())
    assert_close(f"{path} self-attention dx", grads["query"], want_total, TOL["float64"],
                 np.abs(want_total).max())


@pytest.mark.parametrize("path", list(PATHS))
def test_rank3_mask_and_bias_are_rejected(path):
    spec = S(8, 2)
    a = make_inputs(spec, B, 4)
    fn = PATHS[path](spec)
    for name, value in (("mask", np.ones((B, 4, 4), bool)), ("bias", np.zeros((B, 4, 4)))):
        with pytest.raises(ValueError, match=f"{name}: must have rank 2 .* or rank 4"):
            jb.forward(fn, init_weights(spec), a["query"], a["key"], a["value"],
                       **{name: value}, dtype="float32")


# ---------------------------------------------------------------------------------------
# Dropout.

DROPOUT_SPEC = SMALL.replace(dropout=0.4, causal="top_left")


def test_dropout_drops_a_fraction_p_and_rescales_the_rest():
    p = 0.3
    weights = np.asarray(ours.dropout(jnp.ones((64, 128), jnp.float32), p, jax.random.key(0)))
    dropped = float((weights == 0).mean())
    # 8192 draws: the standard deviation of the fraction is 0.005; 0.05 is ten of them.
    assert abs(dropped - p) < 0.05, f"dropped {dropped:.3f}, p = {p}"
    np.testing.assert_allclose(weights[weights != 0], 1 / (1 - p), rtol=1e-6,
                               err_msg="kept weights not scaled by 1/(1-p)")


@pytest.mark.parametrize("path", list(PATHS))
def test_dropout_is_seeded_and_only_in_training(path):
    a = make_inputs(DROPOUT_SPEC, B, 4, 6, seed=5)
    w = init_weights(DROPOUT_SPEC, seed=5)
    fn = PATHS[path](DROPOUT_SPEC)

    def run(**kwargs):
        return jb.forward(fn, w, a["query"], a["key"], a["value"], dtype="float32", **kwargs)

    first, again, other = (run(training=True, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(first, again, err_msg=f"{path}: seed 0 twice")
    assert not np.allclose(first, other), f"{path}: seeds 0 and 1 drop the same weights"
    want = oracle.forward(DROPOUT_SPEC, w, a["query"], a["key"], a["value"])
    assert not np.allclose(first, want, atol=1e-3), f"{path}: training mode dropped nothing"
    # Inference ignores dropout, with the keyword left out and with training=False.
    p = jb.params(w, "float32")
    q, k, v = (jb.tensor(a[n], "float32") for n in ("query", "key", "value"))
    for out in (run(), jb.to_numpy(fn(p, q, k, v, training=False, seed=0))):
        assert_close(f"{path} inference", out, want, TOL["float32"], np.abs(want).max())
    with pytest.raises(ValueError, match="seed"):
        fn(p, q, k, v, training=True)


# ---------------------------------------------------------------------------------------
# The layer: init and apply, jitted as a model would.

LAYER_SPEC = S(8, 4, num_kv_heads=2, kdim=6, vdim=5, out_dim=7, causal="bottom_right")


def test_init_gives_canonical_params():
    params = {n: np.asarray(p) for n, p in ours.init(LAYER_SPEC, jax.random.key(0)).items()}
    other = {n: np.asarray(p) for n, p in ours.init(LAYER_SPEC, jax.random.key(1)).items()}
    assert {n: p.shape for n, p in params.items()} == weight_shapes(LAYER_SPEC)
    for name, p in params.items():
        assert p.dtype == np.float32, name
        if name.startswith("b"):
            assert not p.any(), f"{name}: biases start at zero"
        else:
            assert not np.array_equal(p, other[name]), f"{name}: same for two rng keys"
            std, expected = float(p.std()), p.shape[0] ** -0.5
            assert 0.5 * expected < std < 1.5 * expected, f"{name}: std {std}, ~{expected}"


def test_jitted_apply_matches_oracle_with_gradients():
    # float32, so that the fused path runs the kernel under jit (one compile, fwd + bwd).
    spec, dtype = LAYER_SPEC, "float32"
    a = make_inputs(spec, B, 4, 6, seed=7)
    params = ours.init(spec, jax.random.key(7))
    mask = np.tril(np.ones((4, 6), bool), 1)
    apply = jax.jit(ours.apply, static_argnames=ours.APPLY_STATIC)

    @jax.jit
    def out_and_grads(params, q, k, v):
        def loss(params, q, k, v):
            out = apply(spec, params, q, k, v, jnp.asarray(mask))
            return jnp.sum(out * a["d_out"].astype(np.float32)), out
        return jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(params, q, k, v)

    inputs = [jb.tensor(a[n], dtype) for n in ("query", "key", "value")]
    (_, out), (d_params, *d_inputs) = out_and_grads(params, *inputs)
    w = {name: jb.to_numpy(p) for name, p in params.items()}
    x = [jb.to_numpy(t) for t in inputs]
    want = oracle.forward(spec, w, *x, mask)
    want_grads = oracle.vjp(spec, w, *x, a["d_out"], mask)
    assert_close("apply out", jb.to_numpy(out), want, TOL[dtype], np.abs(want).max())
    got_grads = {**d_params, **dict(zip(("query", "key", "value"), d_inputs))}
    for name, g in got_grads.items():
        scale = np.abs(want_grads[SCALE_OF.get(name, name)]).max()
        assert_close(f"apply d{name}", jb.to_numpy(g), want_grads[name], TOL[dtype], scale)
