"""The PyTorch adapter: NumPy in, float64 NumPy out, gradients from ``torch.autograd``.

Devices are "cpu" and, where CUDA is present, "gpu" (the suite's name for ``cuda``).
"""

from __future__ import annotations

import numpy as np
import torch

from attnsuite.impls.backends.common import convert_inputs, differentiable_inputs
from attnsuite.impls.errors import Unsupported

_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_DEVICES = {"cpu": "cpu", "gpu": "cuda"}


def devices() -> list[str]:
    return ["cpu", "gpu"] if torch.cuda.is_available() else ["cpu"]


def dtypes(device: str = "cpu") -> list[str]:
    _device(device)
    return list(_DTYPES)


def _device(device: str) -> torch.device:
    if device not in devices():
        raise Unsupported(f"torch runs on {devices()}, not {device!r}")
    return torch.device(_DEVICES[device])


def _dtype(dtype: str) -> torch.dtype:
    if dtype not in _DTYPES:
        raise Unsupported(f"torch runs {list(_DTYPES)}, not {dtype}")
    return _DTYPES[dtype]


def tensor(array, dtype: str, device: str = "cpu") -> torch.Tensor:
    array = np.asarray(array)
    if array.dtype == bool:
        return torch.from_numpy(array.copy()).to(_device(device))
    # From float64, so that every dtype is one rounding away from the NumPy data
    # (NumPy has no bfloat16 that torch reads).
    return torch.from_numpy(array.astype(np.float64)).to(device=_device(device), dtype=_dtype(dtype))


concatenate = torch.cat   # joins the steps of a decode (conformance.decode)

def to_numpy(value: torch.Tensor) -> np.ndarray:
    value = value.detach().cpu()
    if value.dtype == torch.bool:
        return value.numpy()
    if value.dtype == torch.bfloat16:  # NumPy cannot hold torch's bfloat16: widen (exactly)
        value = value.to(torch.float32)
    return value.numpy().astype(np.float64)


def params(weights, dtype: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    return {name: tensor(w, dtype, device) for name, w in weights.items()}


def _inputs(query, key, value, mask, bias, dtype, device, form):
    return convert_inputs(tensor, query, key, value, mask, bias, dtype, device, form)


def forward(fn, weights, query, key, value, mask=None, bias=None, *, dtype, device="cpu",
            training=False, seed=None, form="qkv") -> np.ndarray:
    q, k, v, m, b = _inputs(query, key, value, mask, bias, dtype, device, form)
    kwargs = {"training": True, "seed": seed} if training else {}
    with torch.no_grad():
        out = fn(params(weights, dtype, device), q, k, v, mask=m, bias=b, **kwargs)
    return to_numpy(out)


def forward_and_vjp(fn, weights, query, key, value, d_out, mask=None, bias=None, *, dtype,
                    device="cpu", form="qkv"):
    q, k, v, m, b = _inputs(query, key, value, mask, bias, dtype, device, form)
    p = params(weights, dtype, device)
    wrt = differentiable_inputs(form, q, k, v)
    wrt.update(p)
    for t in wrt.values():
        t.requires_grad_(True)

    with torch.enable_grad():
        out = fn(p, q, k, v, mask=m, bias=b)
        if out.requires_grad:
            grads = torch.autograd.grad(out, list(wrt.values()),
                                        grad_outputs=tensor(d_out, dtype, device),
                                        allow_unused=True)
        else:  # fn cut every input out of the graph: that is a zero gradient, judged as such
            grads = [None] * len(wrt)
    # An input the output does not depend on has a zero gradient, not a missing one.
    return to_numpy(out), {name: to_numpy(torch.zeros_like(t) if g is None else g)
                           for (name, t), g in zip(wrt.items(), grads)}


def block_until_ready(result):
    """Wait for queued CUDA work (whatever ``result`` holds: a tensor, a tuple, a dict)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return result
