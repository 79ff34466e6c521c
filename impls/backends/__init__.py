"""Framework adapters: one module per framework, the same functions in each.

Each of ``attnsuite.impls.backends.{numpy,torch,tensorflow,jax}`` defines

- ``devices() -> list[str]``: "cpu", and "gpu" where one is present;
- ``dtypes(device) -> list[str]``: which of float64, float32, float16, bfloat16 it runs;
- ``tensor(array, dtype, device)``: NumPy -> framework tensor (bool arrays stay bool);
- ``to_numpy(tensor) -> np.ndarray`` in float64 (bool stays bool);
- ``params(weights, dtype, device) -> dict``: canonical NumPy weights -> framework tensors;
- ``forward(fn, weights, query, key, value, mask=None, bias=None, *, dtype, device,
  training=False, seed=None, form="qkv") -> np.ndarray``;
- ``forward_and_vjp(fn, weights, query, key, value, d_out, mask=None, bias=None, *, dtype,
  device, form="qkv") -> (out, grads)``: the framework's own autodiff through
  ``fn``; grads hold every weight name and the inputs of the call form
  (``attnsuite.impls.calling``): "query", "key", "value" for "qkv"; "query" alone for
  "self" (one tensor passed three times: its total gradient); "query" and "memory" for "kv".
- ``block_until_ready(result)``: wait for asynchronous work (timing).

A framework that is not installed is reported by ``framework_status`` with the reason,
and its module is never imported.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

FRAMEWORKS = ("numpy", "torch", "tensorflow", "jax")
DTYPES = ("float64", "float32", "float16", "bfloat16")

# The distribution a user installs for each framework (the suite's extras).
_MODULES = {"numpy": "numpy", "torch": "torch", "tensorflow": "tensorflow", "jax": "jax"}
_INSTALL = {"numpy": "pip install attnsuite", "torch": "pip install 'attnsuite[torch]'",
            "tensorflow": "pip install 'attnsuite[tensorflow]'", "jax": "pip install 'attnsuite[jax]'"}


def framework_status(framework: str) -> tuple[bool, str]:
    """(available, reason): cheap, imports nothing."""
    if framework not in _MODULES:
        return False, f"unknown framework {framework!r}; one of {', '.join(FRAMEWORKS)}"
    if importlib.util.find_spec(_MODULES[framework]) is None:
        return False, f"{_MODULES[framework]} is not installed ({_INSTALL[framework]})"
    return True, "installed"


def load_backend(framework: str) -> ModuleType:
    available, reason = framework_status(framework)
    if not available:
        raise ImportError(reason)
    return importlib.import_module(f"attnsuite.impls.backends.{framework}")
