"""NumPy: synchronous, no compiler, no autodiff (the backward is ``fn.vjp`` when given)."""

from __future__ import annotations

import numpy as np

from attnsuite.bench.frameworks import reset_rss_peak, rss_peak
from attnsuite.impls.errors import Unsupported

COMPILE = {"eager": "plain NumPy"}


def configure(threads: int | None) -> None:
    """OPENBLAS/MKL/OMP_NUM_THREADS, set by the runner before the import, are all there is."""


def info(device: str) -> dict:
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    return {"name": "numpy", "version": np.__version__, "device": "cpu",
            "blas": f"{blas.get('name', '?')} {blas.get('version', '')}".strip()}


def _block(result):
    return result


def prepare(fn, params, inputs, mode, compile="eager"):
    q, k, v = inputs["query"], inputs["key"], inputs["value"]
    if mode == "forward":
        return (lambda: fn(params, q, k, v)), _block
    vjp = getattr(fn, "vjp", None)
    if not callable(vjp):
        raise Unsupported("numpy has no autodiff and this fn has no .vjp")
    d_out = inputs["d_out"]

    def forward_backward():
        return fn(params, q, k, v), vjp(params, q, k, v, d_out)
    return forward_backward, _block


def synchronize(device: str) -> None:
    pass


def reset_peak_memory(device: str) -> int | None:
    return reset_rss_peak()


def peak_memory(device: str) -> tuple[int | None, str]:
    return rss_peak()


def is_layer(value) -> bool:
    return False  # NumPy has no layers: an implementation is handed the canonical params


def layer_params(layer, inputs) -> int:
    raise TypeError("numpy has no layers")


def matmul(n: int, dtype: str, device: str):
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
    return (lambda: a @ b), _block


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError)


def compiled_memory(call) -> tuple[int | None, str]:
    return None, "NumPy compiles nothing"
