"""The NumPy adapter. NumPy has no autodiff: gradients come from ``fn.vjp`` when the
implementation provides one (the oracle does), and are unsupported otherwise."""

from __future__ import annotations

import numpy as np

from attnsuite.impls.backends.common import convert_inputs
from attnsuite.impls.calling import fold_input_grads
from attnsuite.impls.errors import Unsupported

_DTYPES = {"float64": np.float64, "float32": np.float32}


def devices() -> list[str]:
    return ["cpu"]


def dtypes(device: str = "cpu") -> list[str]:
    _check_device(device)
    return list(_DTYPES)


def _check_device(device: str) -> None:
    if device not in devices():
        raise Unsupported(f"numpy runs on {devices()}, not {device!r}")


def _dtype(dtype: str):
    if dtype not in _DTYPES:
        raise Unsupported(f"numpy runs {list(_DTYPES)}, not {dtype}")
    return _DTYPES[dtype]


def tensor(array, dtype: str, device: str = "cpu"):
    _check_device(device)
    array = np.asarray(array)
    if array.dtype == bool:
        return array.copy()
    return array.astype(_dtype(dtype))


concatenate = np.concatenate   # joins the steps of a decode (conformance.decode)

def to_numpy(value) -> np.ndarray:
    value = np.asarray(value)
    return value if value.dtype == bool else value.astype(np.float64)


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
    if not callable(getattr(fn, "vjp", None)):
        raise Unsupported("numpy has no autodiff and this fn has no .vjp")
    q, k, v, m, b = _inputs(query, key, value, mask, bias, dtype, device, form)
    p = params(weights, dtype, device)
    out = to_numpy(fn(p, q, k, v, mask=m, bias=b))
    grads = {name: to_numpy(g) for name, g in fn.vjp(p, q, k, v, tensor(d_out, dtype), mask=m, bias=b).items()}
    return out, fold_input_grads(grads, form)


def block_until_ready(result):
    return result
