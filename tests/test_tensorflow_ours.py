"""Our TensorFlow attention (impls/ours/tensorflow.py), both paths and the Keras layer,
against the float64 oracle: forward and every gradient, on every feature of the spec."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import make_inputs, require
from impls import AttentionSpec, Unsupported, init_weights, oracle

tb = require("tensorflow")
import keras  # noqa: E402  (after the skip)
import tensorflow as tf  # noqa: E402

from conformance.cases import Case as ConformanceCase  # noqa: E402
from conformance.checks import dropout_probe  # noqa: E402
from impls.convert import keras as convert  # noqa: E402
from impls.ours import tensorflow as ours  # noqa: E402

# Bound on max|got - oracle| relative to max|oracle| of the same tensor. float64 must be
# float64-accurate: a path that leaks float32 (errors near 1e-7) fails.
TOL = {"float64": 1e-10, "float32": 1e-4}
# A gradient that is zero in the math (softmax cancels the key bias) is judged against
# the scale of a sibling gradient instead of its own (which is rounding noise).
SCALE_OF = {"bk": "wk"}
PATHS = {"explicit": ours.explicit, "fused": ours.fused}
B = 2


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    spec: AttentionSpec
    L_q: int = 5
    L_k: int = 5
    mask: str | None = None      # None | "rank2" | "rank4" (each with an empty query row)
    bias: str | None = None      # None | "rank2" | "rank4"


S = AttentionSpec
CASES = [
    Case("plain", S(8, 2)),
    Case("gqa", S(8, 4, num_kv_heads=2)),
    Case("mqa", S(8, 4, num_kv_heads=1), 4, 6),
    Case("cross_kdim_vdim", S(8, 2, kdim=5, vdim=7), 4, 6),
    Case("head_sizes_out_dim", S(8, 2, head_dim=3, value_head_dim=5, out_dim=6)),
    Case("no_bias", S(8, 2, bias=False), mask="rank2"),
    Case("custom_scale", S(8, 2, scale=0.9)),
    Case("top_left_long_query", S(8, 2, causal="top_left"), 6, 4),
    Case("top_left_long_key", S(8, 2, causal="top_left"), 4, 6),
    Case("bottom_right_long_query", S(8, 2, causal="bottom_right"), 6, 4),  # 2 empty rows
    Case("bottom_right_long_key", S(8, 2, causal="bottom_right"), 4, 6),
    Case("window", S(8, 2, window=(1, 2))),
    Case("window_bottom_right", S(8, 2, causal="bottom_right", window=(2, 0)), 4, 6),
    Case("top_left_with_mask", S(8, 2, causal="top_left"), mask="rank4"),
    Case("softcap", S(8, 2, softcap=1.0)),
    Case("softcap_before_bias_and_mask", S(8, 2, softcap=1.0), mask="rank2", bias="rank4"),
    Case("bias_rank2", S(8, 2), bias="rank2"),
    Case("bias_rank4", S(8, 4, num_kv_heads=2), 4, 6, bias="rank4"),
    Case("mask_rank2", S(8, 2), 4, 6, mask="rank2"),
    Case("mask_rank4_mqa", S(8, 4, num_kv_heads=1), mask="rank4"),
    Case("everything", S(12, 4, num_kv_heads=2, kdim=5, vdim=7, head_dim=4, value_head_dim=2,
                         out_dim=9, scale=0.5, causal="bottom_right", window=(2, 1), softcap=2.0),
         6, 5, mask="rank4", bias="rank2"),
    Case("everything_but_softcap", S(12, 4, num_kv_heads=2, kdim=5, vdim=7, head_dim=4,
                                     value_head_dim=2, out_dim=9, scale=0.5, causal="top_left",
                                     window=(3, 0)),
         6, 5, mask="rank4", bias="rank4"),
    # Long contractions: accumulated in 16 bits they land 4-6x the plain float16 error.
    Case("wide", S(128, 2), 32, 32),
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


def assert_grads_close(where: str, grads: dict, want: dict, tol: float) -> None:
    assert set(grads) == set(want), f"{where}: gradients {sorted(grads)}, oracle {sorted(want)}"
    for name, g in grads.items():
        scale = np.abs(want[SCALE_OF.get(name, name)]).max()
        assert_close(f"{where} d{name}", g, want[name], tol, scale)


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_oracle(case, path, dtype):
    a = case_arrays(case)
    w, q, k, v, d_out, mask, bias = (a[n] for n in ("weights", "query", "key", "value", "d_out",
                                                    "mask", "bias"))
    fn = PATHS[path](case.spec)
    where = f"{case.id} [{path}, {dtype}]"

    want = oracle.forward(case.spec, w, q, k, v, mask, bias)
    out_no_tape = tb.forward(fn, w, q, k, v, mask, bias, dtype=dtype)
    out, grads = tb.forward_and_vjp(fn, w, q, k, v, d_out, mask, bias, dtype=dtype)
    scale = np.abs(want).max()
    assert_close(f"{where} out (no tape)", out_no_tape, want, TOL[dtype], scale)
    assert_close(f"{where} out", out, want, TOL[dtype], scale)
    want_grads = oracle.vjp(case.spec, w, q, k, v, d_out, mask, bias)
    assert_grads_close(where, grads, want_grads, TOL[dtype])

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
    expected = {c.id for c in CASES if c.mask is not None} | {"bottom_right_long_query"}
    assert expected <= with_empty, sorted(expected - with_empty)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("spec", [S(8, 2), S(8, 4, num_kv_heads=2, causal="top_left", softcap=3.0)],
                         ids=["plain", "gqa_causal_softcap"])
def test_self_attention_matches_oracle(spec, path):
    a = make_inputs(spec, B, 5, seed=3)
    w = init_weights(spec, seed=3)
    x = a["query"]
    want_grads = oracle.vjp(spec, w, x, x, x, a["d_out"])
    want_total = want_grads["query"] + want_grads["key"] + want_grads["value"]
    out, grads = tb.forward_and_vjp(PATHS[path](spec), w, x, None, None, a["d_out"],
                                    dtype="float64", self_attention=True)
    want = oracle.forward(spec, w, x, x, x)
    assert_close(f"{path} self-attention out", out, want, TOL["float64"], np.abs(want).max())
    assert_close(f"{path} self-attention dx", grads["query"], want_total, TOL["float64"],
                 np.abs(want_total).max())


LOW_PRECISION_CASES = [c for c in CASES if c.id in ("everything_but_softcap", "wide")]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=[c.id for c in LOW_PRECISION_CASES])
def test_low_precision_is_within_a_few_times_the_plain_computation(case, path, dtype):
    a = case_arrays(case)
    args = (a["weights"], a["query"], a["key"], a["value"], a["mask"], a["bias"])
    want = oracle.forward(case.spec, *args)
    baseline = np.abs(oracle.forward(case.spec, *args, precision=dtype) - want).max()
    err = np.abs(tb.forward(PATHS[path](case.spec), *args, dtype=dtype) - want).max()
    assert err <= 3 * baseline, (f"{case.id} [{path}, {dtype}]: error {err:.3g} > 3 x the plain "
                                 f"{dtype} computation's {baseline:.3g}")


STRUCTURAL_SPECS = [S(4, 1, causal="top_left"), S(4, 1, causal="bottom_right"),
                    S(4, 1, window=(1, 0)), S(4, 1, window=(0, 2)),
                    S(4, 1, causal="top_left", window=(2, 0)),
                    S(4, 1, causal="bottom_right", window=(1, 1))]


@pytest.mark.parametrize("L_q, L_k", [(5, 5), (6, 3), (3, 6)])
@pytest.mark.parametrize("spec", STRUCTURAL_SPECS, ids=str)
def test_structural_visibility_is_the_oracles(spec, L_q, L_k):
    got = ours.structural_visibility(spec, L_q, L_k).numpy()
    np.testing.assert_array_equal(got, oracle.structural_mask(spec, L_q, L_k),
                                  err_msg=f"{spec} L_q={L_q} L_k={L_k}")


@pytest.mark.parametrize("path", list(PATHS))
def test_rank3_and_non_boolean_masks_are_rejected(path):
    spec = S(8, 2)
    a = make_inputs(spec, B, 4)
    fn = PATHS[path](spec)
    bad = {"mask": (np.ones((B, 4, 4), bool), "mask: must have rank 2 .* or rank 4"),
           "bias": (np.zeros((B, 4, 4)), "bias: must have rank 2 .* or rank 4")}
    for name, (value, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            tb.forward(fn, init_weights(spec), a["query"], a["key"], a["value"],
                       **{name: value}, dtype="float32")
    p = tb.params(init_weights(spec), "float32")
    q = tb.tensor(a["query"], "float32")
    with pytest.raises(ValueError, match="mask: must be boolean"):
        fn(p, q, q, q, mask=tf.ones((4, 4)))


@pytest.mark.parametrize("spec, training, uses_op", [
    (S(8, 4, num_kv_heads=1, causal="bottom_right", window=(1, 1)), False, True),
    (S(8, 2, causal="top_left", dropout=0.5), False, True),   # inference: dropout is off
    (S(8, 2, causal="top_left", dropout=0.5), True, False),   # the op has no dropout
    (S(8, 2, softcap=2.0), False, False),                     # nor softcap
], ids=["mqa_bottom_right_window", "dropout_inference", "dropout_training", "softcap"])
def test_fused_runs_the_keras_op_unless_it_cannot_express_the_spec(monkeypatch, spec, training,
                                                                  uses_op):
    calls = []
    original = keras.ops.dot_product_attention

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(keras.ops, "dot_product_attention", counting)
    a = make_inputs(spec, B, 4, 6)
    tb.forward(ours.fused(spec), init_weights(spec), a["query"], a["key"], a["value"],
               dtype="float32", training=training, seed=0)
    assert bool(calls) == uses_op, f"{spec} training={training}: op calls {calls}"


def test_fused_needs_keras_on_tensorflow(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(Unsupported, match="KERAS_BACKEND='jax'"):
        ours.fused(S(8, 2))


# ---------------------------------------------------------------------------------------
# Dropout.

DROPOUT_SPEC = S(8, 2, num_kv_heads=1, dropout=0.4, causal="top_left")


@pytest.mark.parametrize("path", list(PATHS))
def test_dropout_is_seeded_and_only_in_training(path):
    a = make_inputs(DROPOUT_SPEC, B, 6, seed=5)
    w = init_weights(DROPOUT_SPEC, seed=5)
    fn = PATHS[path](DROPOUT_SPEC)

    def run(**kwargs):
        return tb.forward(fn, w, a["query"], a["key"], a["value"], dtype="float64", **kwargs)

    first, again = run(training=True, seed=0), run(training=True, seed=0)
    other = run(training=True, seed=1)
    np.testing.assert_array_equal(first, again, err_msg=f"{path}: seed 0 twice")
    assert not np.allclose(first, other), f"{path}: seeds 0 and 1 drop the same weights"
    want = oracle.forward(DROPOUT_SPEC, w, a["query"], a["key"], a["value"])
    assert not np.allclose(first, want), f"{path}: training mode dropped nothing"
    p = tb.params(w, "float64")
    q, k, v = (tb.tensor(a[n], "float64") for n in ("query", "key", "value"))
    for out in (run(), fn(p, q, k, v, training=False, seed=0).numpy()):   # inference: no dropout
        assert_close(f"{path} inference", out, want, TOL["float64"], np.abs(want).max())


@pytest.mark.parametrize("path", list(PATHS))
def test_dropout_drops_a_fraction_p_and_rescales_the_rest(path):
    # The suite's probe: out[b, i, j] is attention weight j of row i, after dropout.
    p = 0.3
    case = ConformanceCase(S(16, 1, bias=False, dropout=p), B=8, L_q=64, L_k=16,
                           dtype="float32", checks=("dropout",))
    d = dropout_probe(case)
    out = tb.forward(PATHS[path](case.spec), d.weights, d.query, d.key, d.value,
                     dtype="float32", training=True, seed=0)
    kept_value = 1 / (case.L_k * (1 - p))
    dropped = out == 0
    np.testing.assert_allclose(out[~dropped], kept_value, rtol=1e-6,
                               err_msg=f"{path}: kept weights not scaled by 1/(1-p)")
    # 8192 draws: the standard deviation of the fraction is 0.005; 0.03 is six of them.
    assert abs(dropped.mean() - p) < 0.03, f"{path}: dropped {dropped.mean():.3f}, p = {p}"


# ---------------------------------------------------------------------------------------
# The Keras layer.

LAYER_SPEC = S(8, 4, num_kv_heads=2, kdim=6, vdim=5, out_dim=7, causal="bottom_right", dropout=0.5)


@pytest.mark.parametrize("fused", [False, True], ids=["explicit", "fused"])
def test_layer_matches_oracle_and_exports_its_weights(fused):
    spec = LAYER_SPEC
    w = init_weights(spec, seed=7)
    a = make_inputs(spec, B, 4, 6, seed=7)
    layer = ours.MultiHeadAttention.from_canonical(spec, w, fused=fused, dtype="float64")
    exported = layer.to_canonical()
    assert list(exported) == list(w)
    for name in w:
        np.testing.assert_array_equal(exported[name], w[name], err_msg=f"exported {name}")
    from_list = convert.ours_to_canonical(spec, layer.get_weights())
    for name in w:
        np.testing.assert_array_equal(from_list[name], w[name], err_msg=f"get_weights {name}")

    q, k, v = (tf.constant(a[n]) for n in ("query", "key", "value"))
    mask = np.tril(np.ones((4, 6), bool), 1)
    with tf.GradientTape() as tape:
        tape.watch([q, k, v])
        out = layer(q, k, v, attention_mask=tf.constant(mask))   # inference: dropout off
    variables = {name: layer.canonical[name].value for name in w}
    grads = tape.gradient(out, [q, k, v, *variables.values()], output_gradients=a["d_out"])

    want = oracle.forward(spec, w, a["query"], a["key"], a["value"], mask)
    assert_close("layer out", out.numpy(), want, TOL["float64"], np.abs(want).max())
    got = dict(zip(["query", "key", "value", *variables], (g.numpy() for g in grads)))
    assert_grads_close("layer", got,
                       oracle.vjp(spec, w, a["query"], a["key"], a["value"], a["d_out"], mask),
                       TOL["float64"])


def test_layer_loaded_with_set_weights_is_the_same_layer():
    spec = LAYER_SPEC
    w = init_weights(spec, seed=8)
    a = make_inputs(spec, B, 4, 6, seed=8)
    layer = ours.MultiHeadAttention(spec, dtype="float64")
    layer.set_weights(convert.canonical_to_ours(spec, w))
    want = oracle.forward(spec, w, a["query"], a["key"], a["value"])
    got = layer(a["query"], a["key"], a["value"]).numpy()
    assert_close("set_weights layer out", got, want, TOL["float64"], np.abs(want).max())


def test_layer_self_attention_training_and_config():
    spec = S(8, 2, dropout=0.5)
    w = init_weights(spec, seed=2)
    layer = ours.MultiHeadAttention.from_canonical(spec, w, dtype="float64")
    x = make_inputs(spec, B, 5, seed=2)["query"]
    np.testing.assert_array_equal(layer(x), layer(x, x, x), err_msg="key/value default to query")
    np.testing.assert_array_equal(layer(x, training=True, seed=3), layer(x, training=True, seed=3),
                                  err_msg="training with one seed twice")
    assert not np.allclose(layer(x, training=True, seed=3), layer(x, training=True, seed=4))
    assert not np.allclose(layer(x, training=True, seed=3), layer(x))

    clone = ours.MultiHeadAttention.from_config(
        ours.MultiHeadAttention(spec, fused=True, dtype="float64").get_config())
    assert (clone.spec, clone.fused, clone.dtype) == (spec, True, "float64")
    # It composes like any Keras layer: symbolic shapes in a functional model.
    query, key = keras.Input((5, 8)), keras.Input((3, 8))
    model = keras.Model([query, key], ours.MultiHeadAttention(spec)(query, key))
    assert model.output_shape == (None, 5, 8)
