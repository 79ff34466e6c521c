"""Every adapter in impls/backends keeps the contract of impls/backends/__init__.py:
devices and dtypes, conversions, the calling convention of forward, and gradients
checked against closed forms.

The fn here is a tiny closed-form function with hand-written gradients, so wrong
gradient plumbing (a swapped name, a self-attention total not summed) cannot hide
behind attention's own numerics. Torch, TensorFlow and JAX differentiate it with their
own autodiff; NumPy has none and returns what ``fn.vjp`` gives (the same closed form),
so for NumPy the gradient tests check the plumbing around it: names, dtypes, the
self-attention sum. Framework-specific behaviour lives in tests/test_<framework>_backend.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Callable

import ml_dtypes
import numpy as np
import pytest

from conftest import require
from attnsuite.impls import AttentionSpec, Unsupported, init_weights
from attnsuite.impls.backends import DTYPES, FRAMEWORKS

SPEC = AttentionSpec(d_model=6, num_heads=2)
WEIGHTS = init_weights(SPEC, seed=1)
RNG = np.random.default_rng(0)
Q, K, V = (RNG.standard_normal((2, 3, 6)) for _ in range(3))
D_OUT = RNG.standard_normal((2, 3, 6))
NUMPY_DTYPES = {"float64": np.float64, "float32": np.float32, "float16": np.float16,
                "bfloat16": ml_dtypes.bfloat16}


def closed_form(params, query, key, value, mask=None, bias=None):
    """(query * key + 2 key + 3 value) @ wq + bq; wk, wv, wo, bk, bv, bo unused."""
    return (query * key + 2 * key + 3 * value) @ params["wq"] + params["bq"]


def closed_form_vjp(params, query, key, value, d_out, mask=None, bias=None):
    """The gradients of ``closed_form``: zeros for the weights it does not use."""
    d_u = d_out @ params["wq"].T                         # d(query * key + 2 key + 3 value)
    grads = {name: np.zeros_like(w) for name, w in params.items()}
    grads.update(query=d_u * key, key=d_u * (query + 2), value=3 * d_u,
                 wq=np.einsum("bli,blo->io", query * key + 2 * key + 3 * value, d_out),
                 bq=d_out.sum(axis=(0, 1)))
    return grads


closed_form.vjp = closed_form_vjp  # what the NumPy adapter differentiates with


@dataclass(frozen=True)
class Native:
    """The framework's own answers, to check the adapter against."""
    module: ModuleType                       # has the dtypes by name: module.float16, module.bool
    tensor_type: type
    gpu_visible: Callable[[], bool]
    device_of: Callable[[object], str]       # "cpu" or "gpu" for a tensor
    stop_gradient: Callable | None           # None: no autodiff


def native(framework: str) -> Native:
    if framework == "numpy":
        return Native(np, np.ndarray, lambda: False, lambda t: "cpu", None)
    if framework == "torch":
        import torch
        return Native(torch, torch.Tensor, torch.cuda.is_available,
                      lambda t: {"cuda": "gpu"}.get(t.device.type, t.device.type),
                      torch.Tensor.detach)
    if framework == "tensorflow":
        import tensorflow as tf
        return Native(tf, tf.Tensor, lambda: bool(tf.config.list_physical_devices("GPU")),
                      lambda t: t.device.split(":")[-2].lower(),   # ".../device:CPU:0"
                      tf.stop_gradient)
    if framework == "jax":
        import jax
        import jax.numpy as jnp
        return Native(jnp, jax.Array, lambda: bool(_jax_gpus(jax)),
                      lambda t: ",".join(d.platform for d in t.devices()),
                      jax.lax.stop_gradient)
    raise ValueError(framework)


def _jax_gpus(jax) -> list:
    try:
        return jax.devices("gpu")
    except RuntimeError:  # no GPU backend in this install
        return []


@pytest.fixture(params=FRAMEWORKS)
def framework(request) -> str:
    require(request.param)
    return request.param


@pytest.fixture
def backend(framework) -> ModuleType:
    return require(framework)


@pytest.fixture
def own(framework) -> Native:
    return native(framework)


def test_devices_and_dtypes(framework, backend, own):
    assert backend.devices()[0] == "cpu", framework
    assert ("gpu" in backend.devices()) == own.gpu_visible(), framework
    want = ["float64", "float32"] if framework == "numpy" else list(DTYPES)
    for device in backend.devices():
        assert backend.dtypes(device) == want, f"{framework} on {device}"


def test_an_unknown_dtype_is_unsupported(framework, backend):
    with pytest.raises(Unsupported, match="float8"):
        backend.tensor(Q, "float8", "cpu")


def test_an_absent_device_is_unsupported(framework, backend):
    with pytest.raises(Unsupported, match="tpu"):
        backend.tensor(Q, "float32", "tpu")
    if "gpu" not in backend.devices():
        with pytest.raises(Unsupported, match="gpu"):
            backend.dtypes("gpu")
        with pytest.raises(Unsupported, match="gpu"):
            backend.forward(closed_form, WEIGHTS, Q, K, V, dtype="float32", device="gpu")


@pytest.mark.parametrize("dtype", DTYPES)
def test_tensor_rounds_once_and_to_numpy_widens_exactly(framework, backend, own, dtype):
    if dtype not in backend.dtypes("cpu"):
        with pytest.raises(Unsupported, match=dtype):
            backend.tensor(Q, dtype)
        return
    t = backend.tensor(Q, dtype)
    assert isinstance(t, own.tensor_type), f"{framework} {dtype}: got {type(t)}"
    assert t.dtype == getattr(own.module, dtype), f"{framework} {dtype}: got {t.dtype}"
    assert own.device_of(t) == "cpu", f"{framework} {dtype}"
    back = backend.to_numpy(t)
    assert back.dtype == np.float64, f"{framework} {dtype}"
    np.testing.assert_array_equal(back, Q.astype(NUMPY_DTYPES[dtype]).astype(np.float64),
                                  err_msg=f"{framework} {dtype}")


def test_bool_stays_bool_whatever_the_dtype(framework, backend, own):
    mask = RNG.random((3, 3)) > 0.5
    for dtype in backend.dtypes("cpu"):
        t = backend.tensor(mask, dtype)
        assert t.dtype == own.module.bool, f"{framework} {dtype}: got {t.dtype}"
        np.testing.assert_array_equal(backend.to_numpy(t), mask, err_msg=f"{framework} {dtype}")


def test_forward_passes_mask_bias_and_training_only_when_asked(framework, backend, own):
    calls = []

    def recording(params, query, key, value, mask=None, bias=None, **kwargs):
        calls.append({"kwargs": kwargs, "wq": params["wq"].dtype, "mask": mask, "bias": bias})
        return (query + 2 * key + 3 * value) @ params["wq"] + params["bq"]  # no cancellation

    want = (Q + 2 * K + 3 * V) @ WEIGHTS["wq"] + WEIGHTS["bq"]
    mask, bias = RNG.random((3, 3)) > 0.5, RNG.standard_normal((3, 3))
    out = backend.forward(recording, WEIGHTS, Q, K, V, mask, bias, dtype="float64")
    np.testing.assert_allclose(out, want, rtol=1e-14, err_msg=f"{framework} float64")
    out = backend.forward(recording, WEIGHTS, Q, K, V, dtype="float32", training=True, seed=7)
    np.testing.assert_allclose(out, want, rtol=1e-5, err_msg=f"{framework} float32")

    inference, training = calls
    assert inference["kwargs"] == {}, f"{framework}: inference passed {inference['kwargs']}"
    assert inference["wq"] == own.module.float64, framework
    np.testing.assert_array_equal(backend.to_numpy(inference["mask"]), mask, err_msg=framework)
    assert inference["bias"].dtype == own.module.float64, framework
    assert training["kwargs"] == {"training": True, "seed": 7}, framework
    assert training["wq"] == own.module.float32, framework
    assert training["mask"] is None and training["bias"] is None, framework


def test_vjp_matches_the_closed_form(framework, backend):
    out, grads = backend.forward_and_vjp(closed_form, WEIGHTS, Q, K, V, D_OUT, dtype="float64")
    want = closed_form_vjp(WEIGHTS, Q, K, V, D_OUT)
    np.testing.assert_allclose(out, closed_form(WEIGHTS, Q, K, V), rtol=1e-12, err_msg=framework)
    assert set(grads) == {"query", "key", "value", *WEIGHTS}, f"{framework}: {sorted(grads)}"
    for name, g in grads.items():
        assert g.dtype == np.float64 and g.shape == want[name].shape, f"{framework} d{name}"
        np.testing.assert_allclose(g, want[name], rtol=1e-12, err_msg=f"{framework} d{name}")


def test_self_attention_passes_one_tensor_and_sums_its_gradient(framework, backend):
    seen = []

    def recording(params, query, key, value, mask=None, bias=None):
        seen.append(query is key is value)
        return closed_form(params, query, key, value)

    recording.vjp = closed_form_vjp
    _, grads = backend.forward_and_vjp(recording, WEIGHTS, Q, None, None, D_OUT, dtype="float64",
                                       form="self")
    assert all(seen) and seen, f"{framework}: one tensor passed three times? {seen}"
    assert set(grads) == {"query", *WEIGHTS}, f"{framework}: {sorted(grads)}"
    # out = (x * x + 5 x) @ wq + bq, so d/dx = d_u * (2x + 5).
    np.testing.assert_allclose(grads["query"], (D_OUT @ WEIGHTS["wq"].T) * (2 * Q + 5),
                               rtol=1e-12, err_msg=framework)


def test_key_is_value_passes_one_memory_tensor_and_sums_its_gradient(framework, backend):
    seen = []

    def recording(params, query, key, value, mask=None, bias=None):
        seen.append(key is value and key is not query)
        return closed_form(params, query, key, value)

    recording.vjp = closed_form_vjp
    _, grads = backend.forward_and_vjp(recording, WEIGHTS, Q, K, None, D_OUT, dtype="float64",
                                       form="kv")
    assert all(seen) and seen, f"{framework}: one memory tensor as key and value? {seen}"
    assert set(grads) == {"query", "memory", *WEIGHTS}, f"{framework}: {sorted(grads)}"
    # out = (q * m + 5 m) @ wq + bq: d/dm = d_u * (q + 5), d/dq = d_u * m.
    d_u = D_OUT @ WEIGHTS["wq"].T
    np.testing.assert_allclose(grads["memory"], d_u * (Q + 5), rtol=1e-12, err_msg=framework)
    np.testing.assert_allclose(grads["query"], d_u * K, rtol=1e-12, err_msg=framework)


def test_an_output_cut_from_the_graph_has_zero_gradients(framework, backend, own):
    if own.stop_gradient is None:
        pytest.skip(f"{framework} has no autodiff: no graph to cut")

    def cut(params, query, key, value, mask=None, bias=None):
        return own.stop_gradient(closed_form(params, query, key, value))

    _, grads = backend.forward_and_vjp(cut, WEIGHTS, Q, K, V, D_OUT, dtype="float32")
    assert all(not g.any() for g in grads.values()), framework


def test_numpy_without_fn_vjp_is_unsupported():
    backend = require("numpy")
    with pytest.raises(Unsupported, match="vjp"):
        backend.forward_and_vjp(lambda *args, **kwargs: Q, WEIGHTS, Q, K, V, D_OUT,
                                dtype="float64")


def test_block_until_ready_returns_the_result(framework, backend):
    t = backend.tensor(Q, "float32")
    assert backend.block_until_ready(t) is t, framework
    tree = {"a": t, "b": [t]}
    assert backend.block_until_ready(tree) is tree, framework


@pytest.mark.gpu
def test_gpu_runs_on_the_gpu(framework, backend, own):
    if "gpu" not in backend.devices():
        pytest.skip(f"no GPU visible to {framework}")
    assert own.device_of(backend.tensor(Q, "float32", "gpu")) == "gpu", framework
    _, grads = backend.forward_and_vjp(closed_form, WEIGHTS, Q, K, V, D_OUT, dtype="float32",
                                       device="gpu")
    np.testing.assert_allclose(grads["query"], closed_form_vjp(WEIGHTS, Q, K, V, D_OUT)["query"],
                               rtol=1e-4, atol=1e-5, err_msg=framework)
