"""The JAX adapter: NumPy in, float64 NumPy out, gradients from ``jax.vjp`` (SPEC 5).

``forward_and_vjp`` compiles the forward pass and its vjp as one ``jax.jit`` program:
op by op, every primitive of both passes is compiled on its own for each new shape
(about 60 compiles a case, three times the cost of one). A dot algorithm the device
rejects (float16 attention accumulated in float32 on CPU) is left to XLA, as op-by-op
execution gets it (``_compiled``). Whatever still fails compiled (a fn that reads concrete
values: the contract does not ask for jit) runs eagerly instead.
``forward`` stays eager, so each call runs ``fn``'s Python body and any state it keeps
between calls shows in the results. Wrap ``fn`` in ``jax.jit`` yourself for timing.
"""

from __future__ import annotations

import functools

import jax

# JAX silently turns float64 arrays into float32 unless x64 is on, which would make
# every float64 case a float32 one. The switch is process-wide and must be set before
# the first array exists, hence at import; the suite gives every array an explicit
# dtype, so the other effect of x64 (Python floats defaulting to float64) never shows.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
from jax.core import eval_jaxpr as jax_core_eval  # noqa: E402
from jax.extend import core as jax_core  # noqa: E402
import numpy as np  # noqa: E402

from attnsuite.impls.backends.common import (  # noqa: E402
    QUICK_XLA_CPU_OPTIONS, convert_inputs, differentiable_inputs)
from attnsuite.impls.errors import Unsupported  # noqa: E402

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


concatenate = jnp.concatenate   # joins the steps of a decode (conformance.decode)

def to_numpy(value) -> np.ndarray:
    value = np.asarray(jax.device_get(value))
    if value.dtype == bool:
        return value
    if value.dtype == jnp.bfloat16:  # NumPy has no direct bfloat16 -> float64 cast
        value = value.astype(np.float32)
    return value.astype(np.float64)


def params(weights, dtype: str, device: str = "cpu") -> dict:
    return {name: tensor(w, dtype, device) for name, w in weights.items()}


def _inputs(query, key, value, mask, bias, dtype, device, form):
    return convert_inputs(tensor, query, key, value, mask, bias, dtype, device, form)


def forward(fn, weights, query, key, value, mask=None, bias=None, *, dtype, device="cpu",
            training=False, seed=None, form="qkv") -> np.ndarray:
    q, k, v, m, b = _inputs(query, key, value, mask, bias, dtype, device, form)
    kwargs = {"training": True, "seed": seed} if training else {}
    return to_numpy(fn(params(weights, dtype, device), q, k, v, mask=m, bias=b, **kwargs))


def forward_and_vjp(fn, weights, query, key, value, d_out, mask=None, bias=None, *, dtype,
                    device="cpu", form="qkv"):
    q, k, v, m, b = _inputs(query, key, value, mask, bias, dtype, device, form)
    distinct = differentiable_inputs(form, q, k, v)
    names, inputs = tuple(distinct), tuple(distinct.values())
    both = functools.partial(_forward_and_vjp, fn, form)
    args = (params(weights, dtype, device), inputs, m, b, tensor(d_out, dtype, device))
    try:
        out, d_params, d_inputs = _compiled(both, device)(*args)
    except Exception:
        # Tracing asks more of fn than the contract does (no reading concrete values):
        # what fails compiled is judged eagerly.
        out, d_params, d_inputs = both(*args)
    grads = {name: to_numpy(g) for name, g in d_params.items()}
    grads.update({name: to_numpy(g) for name, g in zip(names, d_inputs)})
    return to_numpy(out), grads


_QUICK_COMPILE = {"cpu": QUICK_XLA_CPU_OPTIONS}


@functools.cache
def _quick_compile(device: str) -> dict | None:
    """The device's options, or None where this XLA rejects them (XLA renames its options
    now and then; a rejected one would send every call down the slow eager path)."""
    options = _QUICK_COMPILE.get(device)
    try:
        jax.jit(lambda x: x + 1, compiler_options=options)(tensor(0.0, "float32", device))
    except Exception:
        return None
    return options


def _compiled(function, device: str):
    """``function`` as one compiled program. Where the device rejects a dot algorithm the
    program asks for, the algorithm is left to XLA instead, as op-by-op execution gets it:
    ``jax.nn.dot_product_attention`` asks for float16 x float16 -> float32, which XLA's CPU
    backend lacks; run op by op, the request fails at once and JAX's attention retries
    without it, but in a traced program the failure comes only at the end, past that retry
    (and running the case op by op instead costs a compile per primitive: fifty a case)."""
    options = _quick_compile(device)

    def run(*args):
        try:
            return jax.jit(function, compiler_options=options)(*args)
        except Exception:
            traced = jax.make_jaxpr(function, return_shape=True)
            closed, shape = traced(*args)
            supported = _without_rejected_algorithms(closed.jaxpr, device)
            if supported is closed.jaxpr:
                raise
            program = jax.jit(lambda *flat: jax_core_eval(supported, closed.consts, *flat),
                              compiler_options=options)
            flat = program(*jax.tree_util.tree_leaves(args))
            return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shape), flat)
    return run


def _without_rejected_algorithms(jaxpr, device: str):
    """``jaxpr`` (the same object where nothing changes) with every dot algorithm preset
    that ``device`` rejects replaced by XLA's default, in sub-programs too."""
    eqns, changed = [], False
    for eqn in jaxpr.eqns:
        params = {name: _in_param(value, device) for name, value in eqn.params.items()}
        precision = params.get("precision")
        if (eqn.primitive.name == "dot_general" and isinstance(precision, jax.lax.DotAlgorithmPreset)
                and not _takes_algorithm(precision, device)):
            params["precision"] = None
        if any(params[name] is not eqn.params[name] for name in params):
            eqn, changed = eqn.replace(params=params), True
        eqns.append(eqn)
    return jaxpr.replace(eqns=eqns) if changed else jaxpr


def _in_param(value, device: str):
    if isinstance(value, tuple):
        values = tuple(_in_param(v, device) for v in value)
        return values if any(a is not b for a, b in zip(values, value)) else value
    if isinstance(value, jax_core.ClosedJaxpr):
        inner = _without_rejected_algorithms(value.jaxpr, device)
        return value if inner is value.jaxpr else value.replace(jaxpr=inner)
    if isinstance(value, jax_core.Jaxpr):
        return _without_rejected_algorithms(value, device)
    return value


@functools.cache
def _takes_algorithm(preset, device: str) -> bool:
    """Whether JAX lowers a dot with ``preset`` for ``device`` (lowering only: no compile)."""
    dot = functools.partial(jax.lax.dot, precision=preset)
    operand = tensor(np.ones((1, 1)), "float32", device)
    try:
        jax.jit(dot).lower(operand, operand)
    except ValueError:
        return False
    return True


def _forward_and_vjp(fn, form, params, inputs, mask, bias, d_out):
    def call(p, *xs):
        q, k, v = {"self": lambda: xs * 3, "kv": lambda: (xs[0], xs[1], xs[1])}.get(form, lambda: xs)()
        return fn(p, q, k, v, mask=mask, bias=bias)

    out, pullback = jax.vjp(call, params, *inputs)
    # jax.vjp wants the cotangent in the output's dtype, whatever fn returned.
    d_params, *d_inputs = pullback(d_out.astype(out.dtype))
    return out, d_params, d_inputs


def block_until_ready(result):
    return jax.block_until_ready(result)
