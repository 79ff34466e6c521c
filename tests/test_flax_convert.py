"""The flax weight converters (impls/convert/flax.py): the layouts are flax's own (checked
against freshly initialised layers), both directions are exact, and a layer loaded
through them, the way a user would load it, computes the oracle's attention."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_inputs, require
from attnsuite.impls import AttentionSpec, init_weights, oracle

jb = require("jax")
import flax.linen as nn  # noqa: E402  (after the skip)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from attnsuite.impls.convert import flax as convert  # noqa: E402

S = AttentionSpec
B, L_Q, L_K = 2, 4, 6
# linen: no grouped-query heads; nnx: one input size for key and value.
LINEN_SPECS = [S(8, 2), S(8, 2, bias=False), S(8, 2, kdim=5, vdim=7, out_dim=6, head_dim=3)]
NNX_SPECS = [S(8, 2), S(8, 2, bias=False), S(12, 4, num_kv_heads=2, kdim=5, vdim=5, out_dim=6),
             S(8, 4, num_kv_heads=1, head_dim=3)]


def linen_layer(spec):
    return nn.MultiHeadDotProductAttention(num_heads=spec.H, qkv_features=spec.H * spec.d_k,
                                           out_features=spec.E_o, use_bias=spec.bias)


def nnx_layer(spec):
    return nnx.MultiHeadAttention(num_heads=spec.H, in_features=spec.E,
                                  qkv_features=spec.H * spec.d_k, out_features=spec.E_o,
                                  num_kv_heads=spec.H_kv, in_kv_features=spec.E_k,
                                  use_bias=spec.bias, decode=False, rngs=nnx.Rngs(0))


# The layers' own layouts, from shape evaluation (no compiling): ShapeDtypeStruct leaves.
def linen_abstract_params(spec) -> dict:
    x = (jnp.ones((1, L_Q, spec.E)), jnp.ones((1, L_K, spec.E_k)), jnp.ones((1, L_K, spec.E_v)))
    return jax.eval_shape(linen_layer(spec).init, jax.random.key(0), *x)["params"]


def nnx_abstract_state(spec) -> nnx.State:
    return nnx.state(nnx.eval_shape(lambda: nnx_layer(spec)), nnx.Param)


def shapes(tree):
    return jax.tree.map(np.shape, tree)


def random_like(tree, seed: int = 3):
    """A tree of float32 values with ``tree``'s shapes."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda leaf: rng.standard_normal(np.shape(leaf)).astype(np.float32), tree)


def assert_same_weights(where: str, got: dict, want: dict) -> None:
    assert list(got) == list(want), f"{where}: names {list(got)}, expected {list(want)}"
    for name in want:
        assert got[name].dtype == want[name].dtype, f"{where}: {name} is {got[name].dtype}"
        np.testing.assert_array_equal(got[name], want[name], err_msg=f"{where}: {name}")


def assert_same_tree(where: str, got, want) -> None:
    assert shapes(got) == shapes(want), f"{where}: {shapes(got)} vs {shapes(want)}"
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{where}: {path}")


@pytest.mark.parametrize("spec", LINEN_SPECS, ids=str)
def test_linen_layout_is_flaxs_and_both_directions_are_exact(spec):
    layout = linen_abstract_params(spec)
    w = init_weights(spec, seed=1)
    linen = convert.to_linen(spec, w)
    assert shapes(linen) == shapes(layout), f"{spec}: {shapes(linen)} vs flax's {shapes(layout)}"
    assert_same_weights(f"linen {spec}", convert.from_linen(spec, linen), w)
    flax_params = random_like(layout)
    assert_same_tree(f"linen {spec}", convert.to_linen(spec, convert.from_linen(spec, flax_params)),
                     flax_params)


@pytest.mark.parametrize("spec", NNX_SPECS, ids=str)
def test_nnx_layout_is_flaxs_and_both_directions_are_exact(spec):
    template = nnx_abstract_state(spec)
    layout = shapes(nnx.to_pure_dict(template))
    w = init_weights(spec, seed=1)
    state = convert.to_nnx(spec, w, template)
    assert shapes(nnx.to_pure_dict(state)) == layout, f"{spec}: layout differs from flax's"
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(template)), \
        f"{spec}: to_nnx wrote into its template"
    assert_same_weights(f"nnx {spec}", convert.from_nnx(spec, state), w)
    flax_params = random_like(nnx.to_pure_dict(template))
    back = convert.to_nnx(spec, convert.from_linen(spec, flax_params), template)
    assert_same_tree(f"nnx {spec}", nnx.to_pure_dict(back), flax_params)


def test_converters_name_a_misshapen_weight():
    spec = S(8, 2)
    w = init_weights(spec)
    w["wk"] = w["wk"][:, :6]
    with pytest.raises(ValueError, match="wk"):
        convert.to_linen(spec, w)


# ---------------------------------------------------------------------------------------
# Layers loaded through the converters, outside any suite fn, as a user would.

def user_inputs(spec):
    a = make_inputs(spec, B, L_Q, L_K, seed=2)
    mask = np.tril(np.ones((L_Q, L_K), bool), 1)
    return init_weights(spec, seed=2), a["query"], a["key"], a["value"], mask


def assert_matches_oracle(where, out, spec, w, q, k, v, mask):
    want = oracle.forward(spec, w, q, k, v, mask)
    # float32 bound: a converter mistake (a transposed head, a dropped bias) is O(1).
    np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=0,
                               atol=1e-4 * np.abs(want).max(), err_msg=where)


def test_linen_layer_loaded_through_the_converter_matches_oracle():
    spec = LINEN_SPECS[-1]
    layer = linen_layer(spec)
    w, q, k, v, mask = user_inputs(spec)
    params = jax.tree.map(jnp.float32, convert.to_linen(spec, w))
    out = layer.apply({"params": params}, *(jnp.float32(x) for x in (q, k, v)),
                      mask=jnp.asarray(mask)[None, None])
    assert_matches_oracle("linen", out, spec, w, q, k, v, mask)


def test_nnx_layer_loaded_through_the_converter_matches_oracle():
    spec = NNX_SPECS[2]
    layer = nnx.eval_shape(lambda: nnx_layer(spec))   # flax's way to restore a checkpoint
    w, q, k, v, mask = user_inputs(spec)
    nnx.update(layer, convert.to_nnx(spec, {n: jnp.float32(x) for n, x in w.items()},
                                     nnx.state(layer, nnx.Param)))
    out = layer(*(jnp.float32(x) for x in (q, k, v)), mask=jnp.asarray(mask)[None, None])
    assert_matches_oracle("nnx", out, spec, w, q, k, v, mask)
    # And the layer's own weights read back are the ones loaded.
    back = convert.from_nnx(spec, nnx.state(layer, nnx.Param))
    assert_same_weights("nnx read back", back, {n: x.astype(np.float32) for n, x in w.items()})
