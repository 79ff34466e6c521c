"""The TensorFlow adapter (impls/backends/tensorflow.py) keeps its contract: conversions,
the calling convention of forward, and tape gradients checked against closed forms."""

import ml_dtypes
import numpy as np
import pytest

from conftest import require
from impls import AttentionSpec, Unsupported, init_weights

tb = require("tensorflow")
import tensorflow as tf  # noqa: E402  (after the skip)

SPEC = AttentionSpec(d_model=6, num_heads=2)
WEIGHTS = init_weights(SPEC, seed=1)
RNG = np.random.default_rng(0)
Q, K, V = (RNG.standard_normal((2, 3, 6)) for _ in range(3))
D_OUT = RNG.standard_normal((2, 3, 6))


def linear(params, query, key, value, mask=None, bias=None):
    """(query + 2 key + 3 value) @ wq + bq: gradients with a closed form, wk etc. unused."""
    return (query + 2 * key + 3 * value) @ params["wq"] + params["bq"]


def test_devices_and_dtypes():
    assert tb.devices()[0] == "cpu"
    assert ("gpu" in tb.devices()) == bool(tf.config.list_physical_devices("GPU"))
    for device in tb.devices():
        assert tb.dtypes(device) == ["float64", "float32", "float16", "bfloat16"], device


def test_what_it_cannot_run_is_unsupported():
    with pytest.raises(Unsupported, match="float8"):
        tb.tensor(Q, "float8", "cpu")
    with pytest.raises(Unsupported, match="tpu"):
        tb.tensor(Q, "float32", "tpu")
    if "gpu" not in tb.devices():
        with pytest.raises(Unsupported, match="gpu"):
            tb.forward(linear, WEIGHTS, Q, K, V, dtype="float32", device="gpu")


@pytest.mark.parametrize("op, dtype", [(tf.math.erfinv, "float16"),     # no CPU kernel
                                       (tf.bitwise.invert, "float32")])  # integers only
def test_an_op_that_cannot_run_the_dtype_is_unsupported_not_a_crash(op, dtype):
    def uses_op(params, query, key, value, mask=None, bias=None):
        return op(query)

    with pytest.raises(Unsupported, match=f"no {dtype} kernel on cpu"):
        tb.forward(uses_op, WEIGHTS, Q, K, V, dtype=dtype)
    with pytest.raises(Unsupported, match=f"no {dtype} kernel on cpu"):
        tb.forward_and_vjp(uses_op, WEIGHTS, Q, K, V, D_OUT, dtype=dtype)


def test_other_errors_pass_through():
    def misshapen(params, query, key, value, mask=None, bias=None):
        return query @ params["wo"][:4]

    with pytest.raises(tf.errors.InvalidArgumentError):
        tb.forward(misshapen, WEIGHTS, Q, K, V, dtype="float32")


@pytest.mark.parametrize("dtype, numpy_dtype", [("float64", np.float64), ("float32", np.float32),
                                                ("float16", np.float16),
                                                ("bfloat16", ml_dtypes.bfloat16)])
def test_tensor_rounds_once_and_to_numpy_widens_exactly(dtype, numpy_dtype):
    t = tb.tensor(Q, dtype)
    assert t.dtype == getattr(tf, dtype), dtype
    back = tb.to_numpy(t)
    assert back.dtype == np.float64, dtype
    np.testing.assert_array_equal(back, Q.astype(numpy_dtype).astype(np.float64), err_msg=dtype)


def test_bool_stays_bool():
    mask = RNG.random((3, 3)) > 0.5
    t = tb.tensor(mask, "float16")
    assert t.dtype == tf.bool
    np.testing.assert_array_equal(tb.to_numpy(t), mask)


def test_forward_passes_training_only_when_asked():
    calls = []

    def recording(params, query, key, value, mask=None, bias=None, **kwargs):
        calls.append((kwargs, params["wq"].dtype, mask is not None))
        return linear(params, query, key, value)

    out = tb.forward(recording, WEIGHTS, Q, K, V, dtype="float32")
    np.testing.assert_allclose(out, (Q + 2 * K + 3 * V) @ WEIGHTS["wq"] + WEIGHTS["bq"], rtol=1e-5)
    tb.forward(recording, WEIGHTS, Q, K, V, mask=np.ones((3, 3), bool), dtype="float64",
               training=True, seed=7)
    assert calls == [({}, tf.float32, False), ({"training": True, "seed": 7}, tf.float64, True)]


def test_vjp_matches_the_closed_form():
    out, grads = tb.forward_and_vjp(linear, WEIGHTS, Q, K, V, D_OUT, dtype="float64")
    expected_query = D_OUT @ WEIGHTS["wq"].T
    np.testing.assert_allclose(out, (Q + 2 * K + 3 * V) @ WEIGHTS["wq"] + WEIGHTS["bq"], rtol=1e-12)
    np.testing.assert_allclose(grads["query"], expected_query, rtol=1e-12)
    np.testing.assert_allclose(grads["key"], 2 * expected_query, rtol=1e-12)
    np.testing.assert_allclose(grads["value"], 3 * expected_query, rtol=1e-12)
    np.testing.assert_allclose(grads["wq"], np.einsum("bli,blo->io", Q + 2 * K + 3 * V, D_OUT),
                               rtol=1e-12)
    np.testing.assert_allclose(grads["bq"], D_OUT.sum(axis=(0, 1)), rtol=1e-12)
    assert set(grads) == {"query", "key", "value", *WEIGHTS}
    for name in ("wk", "wv", "wo", "bk", "bv", "bo"):  # unused: zeros of the weight's shape
        assert grads[name].shape == WEIGHTS[name].shape, name
        assert not grads[name].any(), name


def test_gradients_reach_params_through_a_layout_conversion():
    def transposed(params, query, key, value, mask=None, bias=None):
        w = tf.transpose(tf.reshape(params["wq"], (6, 2, 3)), (1, 0, 2))   # (heads, E, d)
        return tf.concat([query @ w[0], query @ w[1]], axis=-1)

    _, grads = tb.forward_and_vjp(transposed, WEIGHTS, Q, K, V, D_OUT, dtype="float64")
    np.testing.assert_allclose(grads["wq"], np.einsum("bli,blo->io", Q, D_OUT), rtol=1e-12)


def test_self_attention_passes_one_tensor_and_sums_its_gradient():
    seen = []

    def recording(params, query, key, value, mask=None, bias=None):
        seen.append(query is key is value)
        return linear(params, query, key, value)

    _, grads = tb.forward_and_vjp(recording, WEIGHTS, Q, None, None, D_OUT, dtype="float64",
                                  self_attention=True)
    assert seen == [True]
    assert "key" not in grads and "value" not in grads
    np.testing.assert_allclose(grads["query"], 6 * D_OUT @ WEIGHTS["wq"].T, rtol=1e-12)


def test_an_output_cut_from_the_graph_has_zero_gradients():
    def stopped(params, query, key, value, mask=None, bias=None):
        return tf.stop_gradient(linear(params, query, key, value))

    _, grads = tb.forward_and_vjp(stopped, WEIGHTS, Q, K, V, D_OUT, dtype="float32")
    assert all(not g.any() for g in grads.values())


@pytest.mark.gpu
@pytest.mark.skipif(not tf.config.list_physical_devices("GPU"),
                    reason="no GPU visible to TensorFlow")
def test_gpu_runs_on_the_gpu():
    assert "GPU" in tb.tensor(Q, "float32", "gpu").device
    out, grads = tb.forward_and_vjp(linear, WEIGHTS, Q, K, V, D_OUT, dtype="float32", device="gpu")
    np.testing.assert_allclose(grads["query"], D_OUT @ WEIGHTS["wq"].T, rtol=1e-4, atol=1e-5)
