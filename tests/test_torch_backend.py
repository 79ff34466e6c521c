"""The PyTorch adapter (impls/backends/torch.py) keeps its contract: conversions, the
calling convention of forward, and autograd gradients checked against closed forms."""

import ml_dtypes
import numpy as np
import pytest

from conftest import require
from impls import AttentionSpec, Unsupported, init_weights

tb = require("torch")
import torch  # noqa: E402  (after the skip)

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
    assert ("gpu" in tb.devices()) == torch.cuda.is_available()
    for device in tb.devices():
        assert tb.dtypes(device) == ["float64", "float32", "float16", "bfloat16"], device


def test_what_it_cannot_run_is_unsupported():
    with pytest.raises(Unsupported, match="float8"):
        tb.tensor(Q, "float8", "cpu")
    with pytest.raises(Unsupported, match="tpu"):
        tb.tensor(Q, "float32", "tpu")
    if not torch.cuda.is_available():
        with pytest.raises(Unsupported, match="gpu"):
            tb.forward(linear, WEIGHTS, Q, K, V, dtype="float32", device="gpu")


@pytest.mark.parametrize("dtype, numpy_dtype", [("float64", np.float64), ("float32", np.float32),
                                                ("float16", np.float16),
                                                ("bfloat16", ml_dtypes.bfloat16)])
def test_tensor_rounds_once_and_to_numpy_widens_exactly(dtype, numpy_dtype):
    t = tb.tensor(Q, dtype)
    assert t.dtype == getattr(torch, dtype), dtype
    back = tb.to_numpy(t)
    assert back.dtype == np.float64, dtype
    np.testing.assert_array_equal(back, Q.astype(numpy_dtype).astype(np.float64), err_msg=dtype)


def test_bool_stays_bool():
    mask = RNG.random((3, 3)) > 0.5
    t = tb.tensor(mask, "float16")
    assert t.dtype == torch.bool
    np.testing.assert_array_equal(tb.to_numpy(t), mask)


def test_forward_runs_without_grad_and_passes_training_only_when_asked():
    calls = []

    def recording(params, query, key, value, mask=None, bias=None, **kwargs):
        calls.append((torch.is_grad_enabled(), kwargs, params["wq"].dtype, mask is not None))
        return linear(params, query, key, value)

    out = tb.forward(recording, WEIGHTS, Q, K, V, dtype="float32")
    np.testing.assert_allclose(out, (Q + 2 * K + 3 * V) @ WEIGHTS["wq"] + WEIGHTS["bq"], rtol=1e-5)
    tb.forward(recording, WEIGHTS, Q, K, V, mask=np.ones((3, 3), bool), dtype="float64",
               training=True, seed=7)
    assert calls == [(False, {}, torch.float32, False),
                     (False, {"training": True, "seed": 7}, torch.float64, True)]


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
    def detached(params, query, key, value, mask=None, bias=None):
        return linear(params, query, key, value).detach()

    _, grads = tb.forward_and_vjp(detached, WEIGHTS, Q, K, V, D_OUT, dtype="float32")
    assert all(not g.any() for g in grads.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gpu_runs_on_cuda():
    assert tb.tensor(Q, "float32", "gpu").is_cuda
    out, grads = tb.forward_and_vjp(linear, WEIGHTS, Q, K, V, D_OUT, dtype="float32", device="gpu")
    np.testing.assert_allclose(grads["query"], D_OUT @ WEIGHTS["wq"].T, rtol=1e-4, atol=1e-5)
