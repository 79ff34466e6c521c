"""The Keras weight converters (impls/convert/keras.py): exact round trips both ways, the
layouts of real Keras layers, and a layer loaded through them (as a user would, with
``set_weights``) computing the oracle's attention."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_inputs, require
from attnsuite.impls import AttentionSpec, init_weights, oracle, weight_shapes

require("tensorflow")
import keras  # noqa: E402  (after the skip)

from attnsuite.impls.convert import keras as convert  # noqa: E402

S = AttentionSpec
SPECS = [S(8, 2), S(8, 2, bias=False), S(8, 4, kdim=5, vdim=7, out_dim=6),
         S(6, 3, head_dim=4, value_head_dim=5)]
IDS = ["plain", "no_bias", "cross_out_dim", "head_sizes"]


def keras_layer(spec: AttentionSpec, dtype="float64") -> keras.layers.MultiHeadAttention:
    layer = keras.layers.MultiHeadAttention(num_heads=spec.H, key_dim=spec.d_k, value_dim=spec.d_v,
                                            output_shape=spec.E_o, use_bias=spec.bias, dtype=dtype)
    layer.build((None, None, spec.E), (None, None, spec.E_v), (None, None, spec.E_k))
    return layer


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_keras_shapes_are_those_of_a_real_layer(spec):
    layer = keras_layer(spec)
    real = {v.path.removeprefix(layer.name + "/"): tuple(v.shape) for v in layer.weights}
    assert convert.keras_shapes(spec) == real


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_round_trips_are_exact_both_ways(spec):
    canonical = init_weights(spec, seed=1)
    there = convert.canonical_to_keras(spec, canonical)
    back = convert.keras_to_canonical(spec, there)
    assert list(back) == list(canonical)
    for name in canonical:
        np.testing.assert_array_equal(back[name], canonical[name], err_msg=f"{spec}: {name}")

    rng = np.random.default_rng(2)
    keras_weights = {name: rng.standard_normal(shape)
                     for name, shape in convert.keras_shapes(spec).items()}
    again = convert.canonical_to_keras(spec, convert.keras_to_canonical(spec, keras_weights))
    assert set(again) == set(keras_weights)
    for name in keras_weights:
        np.testing.assert_array_equal(again[name], keras_weights[name], err_msg=f"{spec}: {name}")


def test_head_h_owns_its_canonical_columns():
    spec = S(6, 3, head_dim=2, value_head_dim=4)
    canonical = {name: np.arange(np.prod(shape), dtype=float).reshape(shape)
                 for name, shape in weight_shapes(spec).items()}
    k = convert.canonical_to_keras(spec, canonical)
    for h in range(spec.H):
        q_columns, v_columns = slice(2 * h, 2 * h + 2), slice(4 * h, 4 * h + 4)
        np.testing.assert_array_equal(k["query/kernel"][:, h, :], canonical["wq"][:, q_columns])
        np.testing.assert_array_equal(k["value/bias"][h], canonical["bv"][v_columns])
        np.testing.assert_array_equal(k["attention_output/kernel"][h], canonical["wo"][v_columns])


def test_grouped_query_specs_are_refused():
    with pytest.raises(ValueError, match="num_kv_heads=2 != num_heads=4"):
        convert.canonical_to_keras(S(8, 4, num_kv_heads=2), init_weights(S(8, 4, num_kv_heads=2)))


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-4)])
def test_a_keras_layer_loaded_with_set_weights_computes_the_oracle(dtype, tol):
    # head_dim 4: Keras' scale 1/sqrt(4) is exact in float32 too (see impls/builtin/keras.py).
    spec = S(8, 2, kdim=6, vdim=5, head_dim=4, value_head_dim=3, out_dim=7)
    w = init_weights(spec, seed=3)
    a = make_inputs(spec, 2, 4, 6, seed=3)
    layer = keras_layer(spec, dtype)
    convert.load_keras(layer, spec, w)
    got = keras.ops.convert_to_numpy(layer(a["query"], a["value"], a["key"])).astype(np.float64)
    want = oracle.forward(spec, w, a["query"], a["key"], a["value"])
    err = np.abs(got - want).max()
    assert err <= tol * np.abs(want).max(), f"{dtype}: max error {err:.3g}"

    read = convert.read_keras(layer, spec)
    for name in w:
        np.testing.assert_array_equal(read[name], w[name].astype(dtype),
                                      err_msg=f"read back {name}")


def test_our_layer_weight_list_round_trips():
    spec = S(8, 4, num_kv_heads=2, bias=True)
    w = init_weights(spec, seed=4)
    as_list = convert.canonical_to_ours(spec, w)
    assert [x.shape for x in as_list] == list(weight_shapes(spec).values())
    back = convert.ours_to_canonical(spec, as_list)
    assert list(back) == list(w)
    for name in w:
        np.testing.assert_array_equal(back[name], w[name], err_msg=name)
    with pytest.raises(ValueError, match="expected 8 weights"):
        convert.ours_to_canonical(spec, as_list[:4])
