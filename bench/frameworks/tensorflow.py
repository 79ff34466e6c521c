"""TensorFlow: eager, ``tf.function`` or ``tf.function(jit_compile=True)`` (XLA).

Tensors are passed to the traced function as arguments, never captured, so one trace
serves every call and XLA cannot constant-fold the work away.
"""

from __future__ import annotations

import tensorflow as tf

from attnsuite.bench.frameworks import is_keras_layer, keras_layer_count, reset_rss_peak, rss_peak, sources_of

COMPILE = {"eager": "eager TensorFlow", "jit": "tf.function", "xla": "tf.function(jit_compile=True)"}
_DEVICES = {"cpu": "/CPU:0", "gpu": "/GPU:0"}


def configure(threads: int | None) -> None:
    """Only before TensorFlow's first op: it refuses a change afterwards (asking again is fine)."""
    threading = tf.config.threading
    if threads is not None and threading.get_intra_op_parallelism_threads() != threads:
        threading.set_intra_op_parallelism_threads(threads)
        threading.set_inter_op_parallelism_threads(threads)


def info(device: str) -> dict:
    threading = tf.config.threading
    found = {"name": "tensorflow", "version": tf.__version__, "device": device,
             "intra_op_threads": threading.get_intra_op_parallelism_threads(),
             "inter_op_threads": threading.get_inter_op_parallelism_threads(),
             "tf32": tf.config.experimental.tensor_float_32_execution_enabled()}
    if device == "gpu":
        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
        found.update(gpu=details.get("device_name"), compute_capability=details.get("compute_capability"))
    return found


def synchronize(device: str) -> None:
    if device == "gpu":
        tf.test.experimental.sync_devices()


def _blocker(device: str):
    def block(result):
        synchronize(device)
        return result
    return block


def _compiled(step, compile: str):
    if compile == "eager":
        return step
    return tf.function(step, jit_compile=compile == "xla")


def prepare(fn, params, inputs, mode, compile="eager"):
    sources, expand = sources_of(inputs)
    device = "gpu" if "GPU" in next(iter(params.values())).device else "cpu"
    if mode == "forward":
        def forward(p, s):
            return fn(p, *expand(s))
        step = _compiled(forward, compile)
        return (lambda: step(params, sources)), _blocker(device)

    def forward_backward(p, s, d_out):
        with tf.GradientTape() as tape:
            tape.watch((p, s))
            out = fn(p, *expand(s))
        return tape.gradient(out, (p, s), output_gradients=d_out)
    step = _compiled(forward_backward, compile)
    d_out = inputs["d_out"]
    return (lambda: step(params, sources, d_out)), _blocker(device)


def reset_peak_memory(device: str) -> int | None:
    if device == "gpu":
        tf.config.experimental.reset_memory_stats("GPU:0")
        return tf.config.experimental.get_memory_info("GPU:0")["current"]
    return reset_rss_peak()


def peak_memory(device: str) -> tuple[int | None, str]:
    if device == "gpu":
        return tf.config.experimental.get_memory_info("GPU:0")["peak"], "tf get_memory_info peak"
    return rss_peak()


def is_layer(value) -> bool:
    return is_keras_layer(value) or isinstance(value, tf.Module)


def layer_params(layer, inputs) -> int:
    keras_count = keras_layer_count(layer)
    return keras_count if keras_count is not None else sum(int(tf.size(v)) for v in layer.trainable_variables)


def matmul(n: int, dtype: str, device: str):
    with tf.device(_DEVICES[device]):
        a, b = (tf.random.normal((n, n), dtype=getattr(tf, dtype)) for _ in range(2))
    step = tf.function(tf.linalg.matmul)
    return (lambda: step(a, b)), _blocker(device)


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, (MemoryError, tf.errors.ResourceExhaustedError)) or "RESOURCE_EXHAUSTED" in str(exc)


def compiled_memory(call) -> tuple[int | None, str]:
    return None, "not collected for TensorFlow"
