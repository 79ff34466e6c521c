"""What only our TensorFlow attention (impls/ours/tensorflow.py) has: the Keras op under
the fused path, its dropout, and the Keras layer. Both paths on every feature case, in
every framework, are in tests/test_ours.py."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_inputs, require
from feature_cases import B, LAYER_SPEC, TOL, assert_close, assert_grads_close
from attnsuite.impls import AttentionSpec, Unsupported, init_weights, oracle

tb = require("tensorflow")
import keras  # noqa: E402  (after the skip)
import tensorflow as tf  # noqa: E402

from attnsuite.conformance.cases import Case as ConformanceCase  # noqa: E402
from attnsuite.conformance.checks import dropout_probe  # noqa: E402
from attnsuite.impls.convert import keras as convert  # noqa: E402
from attnsuite.impls.ours import tensorflow as ours  # noqa: E402

S = AttentionSpec
PATHS = {"explicit": ours.explicit, "fused": ours.fused}


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
    assert_close("layer out", out.numpy(), want, TOL["float64"])
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
    assert_close("set_weights layer out", got, want, TOL["float64"])


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
