"""JAX: op-by-op ("eager") or ``jax.jit``; dispatch is asynchronous, so ``block`` waits.

Arrays are passed to the jitted function as arguments, never closed over: a closed-over
array becomes a compile-time constant that XLA may fold away. Nothing is donated, so
the same inputs serve every call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnsuite.bench.frameworks import is_keras_layer, keras_layer_count, reset_rss_peak, rss_peak, sources_of

COMPILE = {"eager": "op-by-op JAX", "jit": "jax.jit"}


def _flax():
    try:
        from flax import linen, nnx
    except ImportError:
        return None, None
    return linen, nnx


def configure(threads: int | None) -> None:
    """XLA_FLAGS, set by the runner before the import, are all there is."""


def info(device: str) -> dict:
    found = {"name": "jax", "version": jax.__version__, "device": device,
             "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
             "default_matmul_precision": jax.config.jax_default_matmul_precision,
             "x64": jax.config.jax_enable_x64}
    if device == "gpu":
        found["gpu"] = jax.devices("gpu")[0].device_kind
    return found


def synchronize(device: str) -> None:
    (jax.device_put(0.0) + 0).block_until_ready()


def block(result):
    return jax.block_until_ready(result)


def prepare(fn, params, inputs, mode, compile="eager"):
    sources, expand = sources_of(inputs)
    wrap = jax.jit if compile == "jit" else (lambda f: f)
    if mode == "forward":
        step, args = wrap(lambda p, s: fn(p, *expand(s))), (params, sources)
    else:
        def forward_backward(p, s, d_out):
            _, pullback = jax.vjp(lambda p, s: fn(p, *expand(s)), p, s)
            return pullback(d_out)
        step, args = wrap(forward_backward), (params, sources, inputs["d_out"])

    def call():
        return step(*args)
    if compile == "jit":
        call.program = (step, args)  # for compiled_memory
    return call, block


def compiled_memory(call) -> tuple[int | None, str]:
    """(bytes, method): the temporary buffers of the compiled program, from XLA's memory
    analysis. Exact and per program, where the device's peak counter is per process:
    it shows whether a program holds an L×L matrix however the runs before it went."""
    program = getattr(call, "program", None)
    if program is None:
        return None, "op-by-op JAX has no single program"
    step, args = program
    analysis = step.lower(*args).compile().memory_analysis()
    if analysis is None:
        return None, "XLA gave no memory analysis on this backend"
    return analysis.temp_size_in_bytes, "XLA memory analysis: temp_size_in_bytes"


def _gpu():
    return jax.devices("gpu")[0]


def reset_peak_memory(device: str) -> int | None:
    if device == "gpu":  # JAX keeps a lifetime high-water mark only: report the level before
        return (_gpu().memory_stats() or {}).get("bytes_in_use")
    return reset_rss_peak()


def peak_memory(device: str) -> tuple[int | None, str]:
    if device == "gpu":
        stats = _gpu().memory_stats() or {}
        return stats.get("peak_bytes_in_use"), "jax peak_bytes_in_use (process lifetime)"
    return rss_peak()


def is_layer(value) -> bool:
    linen, nnx = _flax()
    return is_keras_layer(value) or (nnx is not None and isinstance(value, (nnx.Module, linen.Module)))


def layer_params(layer, inputs) -> int:
    keras_count = keras_layer_count(layer)
    if keras_count is not None:
        return keras_count
    linen, nnx = _flax()
    if isinstance(layer, nnx.Module):
        state = nnx.state(layer, nnx.Param)
    else:  # a linen module holds no variables: ask it which ones it creates
        q, k, v = (inputs[name] for name in ("query", "key", "value"))
        state = jax.eval_shape(layer.init, jax.random.key(0), q, k, v)["params"]
    return sum(leaf.size for leaf in jax.tree.leaves(state))


def matmul(n: int, dtype: str, device: str):
    with jax.default_device(jax.devices(device)[0]):
        a = jax.random.normal(jax.random.key(0), (n, n), dtype=jnp.dtype(dtype))
        b = jax.random.normal(jax.random.key(1), (n, n), dtype=jnp.dtype(dtype))
    step = jax.jit(jnp.matmul)
    return (lambda: step(a, b)), block


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "RESOURCE_EXHAUSTED" in str(exc) or "Out of memory" in str(exc)
