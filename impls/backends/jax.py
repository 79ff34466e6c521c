"""The JAX adapter: NumPy in, float64 NumPy out, gradients from ``jax.vjp`` (SPEC 5).

Runs ``fn`` eagerly: the suite calls each fn on a handful of cases, where compiling a
whole graph costs more than it saves. Wrap ``fn`` in ``jax.jit`` yourself for timing.
"""

from __future__ import annotations

import jax

# JAX silently turns float64 arrays into float32 unless x64 is on, which would make
# every float64 case a float32 one. The switch is process-wide and must be set before
# the first array exists, hence at import; the suite gives every array an explicit
# dtype, so the other effect of x64 (Python floats defaulting to float64) never shows.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from impls.errors import Unsupported  # noqa: E402

_DTYPES = {
    "float64": jnp.float64,
    "float32": jnp.float32,
    "float16": jnp.float16,
    "bfloat16": jnp.bfloat16,
}


def _platform_devices(platform: str) -> list:
    try:
        return jax.devices(platform)
    except RuntimeError:  # no backend for that platform in this install
        return []


def devices() -> list[str]:
    return ["cpu"] + (["gpu"] if _platform_devices("gpu") else [])


def dtypes(device: str = "cpu") -> list[str]:
    _device(device)
    return list(_DTYPES)


def _device(device: str):
    found = _platform_devices(device) if device in ("cpu", "gpu") else []
    if not found:
        raise Unsupported(f"jax has no {device!r} device here (devices: {devices()})")
    return found[0]


def _dtype(dtype: str):
    if dtype not in _DTYPES:
        raise Unsupported(f"jax runs {list(_DTYPES)}, not {dtype}")
    return _DTYPES[dtype]


def tensor(array, dtype: str, device: str = "cpu") -> jax.Array:
    array = np.asarray(array)
    if array.dtype != bool:
        array = array.astype(_dtype(dtype))
    return jax.device_put(array, _device(device))


def to_numpy(value) -> np.ndarray:
    value = np.asarray(jax.device_get(value))
    if value.dtype == bool:
        return value
    if value.dtype == jnp.bfloat16:  # NumPy has no direct bfloat16 -> float64 cast
        value = value.astype(np.float32)
    return value.astype(np.float64)


def params(weights, dtype: str, device: str = "cpu") -> dict:
    return {name: tensor(w, dtype, device) for name, w in weights.items()}


def _inputs(query, key, value, mask, bias, dtype, device, self_attention):
    q = tensor(query, dtype, device)
    k, v = (q, q) if self_attention else (tensor(key, dtype, device), tensor(value, dtype, device))
    m = None if mask is None else tensor(mask, dtype, device)
    b = None if bias is None else tensor(bias, dtype, device)
    return q, k, v, m, b


def forward(fn, weights, query, key, value, mask=None, bias=None, *, dtype, device="cpu",
            training=False, seed=None, self_attention=False) -> np.ndarray:
    q, k, v, m, b = _inputs(query, key, value, mask, bias, dtype, device, self_attention)
    kwargs = {"training": True, "seed": seed} if training else {}
    return to_numpy(fn(params(weights, dtype, device), q, k, v, mask=m, bias=b, **kwargs))


def forward_and_vjp(fn, weights, query, key, value, d_out, mask=None, bias=None, *, dtype,
                    device="cpu", self_attention=False):
    q, k, v, m, b = _inputs(query, key, value, mask, bias, dtype, device, self_attention)
    names, inputs = (("query",), (q,)) if self_attention else (("query", "key", "value"), (q, k, v))

    def call(p, *xs):
        return fn(p, *(xs * 3 if self_attention else xs), mask=m, bias=b)

    out, pullback = jax.vjp(call, params(weights, dtype, device), *inputs)
    # jax.vjp wants the cotangent in the output's dtype, whatever fn returned.
    d_params, *d_inputs = pullback(tensor(d_out, dtype, device).astype(out.dtype))
    grads = {name: to_numpy(g) for name, g in d_params.items()}
    grads.update({name: to_numpy(g) for name, g in zip(names, d_inputs)})
    return to_numpy(out), grads


def block_until_ready(result):
    return jax.block_until_ready(result)
