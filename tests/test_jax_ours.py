"""What only our JAX attention (impls/ours/jax.py) has: its dropout helper, the seed that
training needs, and the layer's init and apply, jitted as a model would. Both paths on
every feature case, in every framework, are in tests/test_ours.py."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_inputs, require
from feature_cases import B, LAYER_SPEC, MULTI_QUERY, TOL, assert_close, assert_grads_close
from attnsuite.impls import init_weights, oracle
from attnsuite.impls.weights import weight_shapes

jb = require("jax")
import jax  # noqa: E402  (after the skip)
import jax.numpy as jnp  # noqa: E402

from attnsuite.impls.ours import jax as ours  # noqa: E402


def test_dropout_drops_a_fraction_p_and_rescales_the_rest():
    p = 0.3
    weights = np.asarray(ours.dropout(jnp.ones((64, 128), jnp.float32), p, 0))
    dropped = float((weights == 0).mean())
    # 8192 draws: the standard deviation of the fraction is 0.005; 0.05 is ten of them.
    assert abs(dropped - p) < 0.05, f"dropped {dropped:.3f}, p = {p}"
    np.testing.assert_allclose(weights[weights != 0], 1 / (1 - p), rtol=1e-6,
                               err_msg="kept weights not scaled by 1/(1-p)")


@pytest.mark.parametrize("path", ["explicit", "fused"])
def test_training_with_dropout_needs_a_seed(path):
    # JAX has no global random state to fall back on, unlike torch and TensorFlow.
    spec = MULTI_QUERY.replace(dropout=0.4)
    a = make_inputs(spec, B, 4, 6, seed=5)
    q, k, v = (jb.tensor(a[n], "float32") for n in ("query", "key", "value"))
    with pytest.raises(ValueError, match="seed"):
        getattr(ours, path)(spec)(jb.params(init_weights(spec), "float32"), q, k, v, training=True)


# ---------------------------------------------------------------------------------------
# The layer: init and apply, jitted as a model would.

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
    assert_close("apply out", jb.to_numpy(out), want, TOL[dtype])
    got_grads = {**d_params, **dict(zip(("query", "key", "value"), d_inputs))}
    assert_grads_close("apply", {n: jb.to_numpy(g) for n, g in got_grads.items()}, want_grads,
                       TOL[dtype])
