"""The TensorFlow adapter: NumPy in, float64 NumPy out, gradients from ``tf.GradientTape``.

Devices are "cpu" and, where TensorFlow sees one, "gpu". Parameters are plain tensors
that the tape watches, so an implementation may convert them (reshape, transpose) on
the way into its own layout and the gradient still reaches the canonical weights.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before the import: quiet start-up logging

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from attnsuite import sanitize
from attnsuite.impls.backends.common import convert_inputs, differentiable_inputs  # noqa: E402
from attnsuite.impls.errors import Unsupported  # noqa: E402

_DTYPES = {
    "float64": tf.float64,
    "float32": tf.float32,
    "float16": tf.float16,
    "bfloat16": tf.bfloat16,
}
_DEVICES = {"cpu": "/CPU:0", "gpu": "/GPU:0"}


def devices() -> list[str]:
    return ["cpu", "gpu"] if tf.config.list_physical_devices("GPU") else ["cpu"]


def dtypes(device: str = "cpu") -> list[str]:
    # Every op our implementations and Keras use (einsum, matmul, softmax, tanh, where,
    # stateless random, their gradients) has a kernel for all four dtypes on CPU and GPU.
    # A third-party fn that reaches one without a kernel is reported by `_run`.
    _device(device)
    return list(_DTYPES)


def _device(device: str) -> str:
    if device not in devices():
        raise Unsupported(f"tensorflow runs on {devices()}, not {device!r}")
    return _DEVICES[device]


def _dtype(dtype: str) -> tf.DType:
    if dtype not in _DTYPES:
        raise Unsupported(f"tensorflow runs {list(_DTYPES)}, not {dtype}")
    return _DTYPES[dtype]


def tensor(array, dtype: str, device: str = "cpu") -> tf.Tensor:
    array = np.asarray(array)
    if array.dtype != bool:
        # Rounded once, from float64, by NumPy (ml_dtypes' bfloat16 is TensorFlow's own).
        array = array.astype(np.float64).astype(_dtype(dtype).as_numpy_dtype)
    with tf.device(_device(device)):
        return tf.constant(array)


concatenate = tf.concat   # joins the steps of a decode (conformance.decode)

def to_numpy(value) -> np.ndarray:
    value = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    return value if value.dtype == bool else value.astype(np.float64)


def params(weights, dtype: str, device: str = "cpu") -> dict[str, tf.Tensor]:
    return {name: tensor(w, dtype, device) for name, w in weights.items()}


def _inputs(query, key, value, mask, bias, dtype, device, form):
    return convert_inputs(tensor, query, key, value, mask, bias, dtype, device, form)


def _lacks_dtype(exc: tf.errors.OpError) -> bool:
    """The op has no kernel for the dtype on this device, or is not defined for it at all."""
    return (isinstance(exc, tf.errors.NotFoundError)   # "Could not find device for node"
            or "is not in the list of allowed values" in exc.message)


def _run(call, dtype: str, device: str):
    """Run ``call()`` on ``device``; an op that cannot run the dtype is Unsupported, not a crash."""
    try:
        with tf.device(_device(device)):
            return call()
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as exc:
        if not _lacks_dtype(exc):
            raise
        first_line = sanitize.one_line(exc.message)
        raise Unsupported(f"tensorflow has no {dtype} kernel on {device} for an op this "
                          f"implementation uses: {first_line}") from exc


def forward(fn, weights, query, key, value, mask=None, bias=None, *, dtype, device="cpu",
            training=False, seed=None, form="qkv") -> np.ndarray:
    q, k, v, m, b = _inputs(query, key, value, mask, bias, dtype, device, form)
    kwargs = {"training": True, "seed": seed} if training else {}
    p = params(weights, dtype, device)
    return to_numpy(_run(lambda: fn(p, q, k, v, mask=m, bias=b, **kwargs), dtype, device))


def forward_and_vjp(fn, weights, query, key, value, d_out, mask=None, bias=None, *, dtype,
                    device="cpu", form="qkv"):
    q, k, v, m, b = _inputs(query, key, value, mask, bias, dtype, device, form)
    p = params(weights, dtype, device)
    wrt = differentiable_inputs(form, q, k, v)
    wrt.update(p)

    def out_and_grads():
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(list(wrt.values()))
            out = fn(p, q, k, v, mask=m, bias=b)
        # An input the output does not depend on has a zero gradient, not a missing one.
        grads = tape.gradient(out, list(wrt.values()),
                              output_gradients=tensor(d_out, dtype, device),
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return out, grads

    out, grads = _run(out_and_grads, dtype, device)
    # convert_to_tensor: a gradient through a gather comes back as IndexedSlices.
    return to_numpy(out), {name: to_numpy(tf.convert_to_tensor(g)) for name, g in zip(wrt, grads)}


def block_until_ready(result):
    """Wait for queued device work (eager CPU ops have finished when they return)."""
    if tf.config.list_logical_devices("GPU"):
        tf.test.experimental.sync_devices()
    return result
