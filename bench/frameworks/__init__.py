"""Per-framework timing code: one module per framework, the same functions in each.

Each of ``attnsuite.bench.frameworks.{numpy,torch,tensorflow,jax}`` defines

- ``COMPILE``: compile mode -> what it means there ("eager", "jit", "xla"; see sweeps);
- ``configure(threads)``: cap the CPU threads (None: the framework's default), before
  any work (the runner also sets the thread environment variables before the import);
- ``info(device) -> dict``: version, threads, precision flags, device name;
- ``prepare(fn, params, inputs, mode, compile) -> (call, block)``: a zero-argument
  ``call`` running one forward (``mode="forward"``) or forward + backward
  (``"forward_backward"``: the gradients of every input and parameter for the cotangent
  ``inputs["d_out"]``), and ``block(result)`` that waits until a result is ready;
  ``params``/``inputs`` are already framework tensors, so nothing is converted in the
  timed region;
- ``synchronize(device)``;
- ``reset_peak_memory(device)`` and ``peak_memory(device) -> (bytes, method)``;
- ``is_layer(value)`` and ``layer_params(layer, inputs) -> int``: what counts as a layer
  there (torch ``nn.Module``, Keras ``Layer``, ``tf.Module``, flax modules) and how many
  variables it holds (see ``attnsuite.bench.case.Workload.count_params``);
- ``compiled_memory(call) -> (bytes, method)``: the temporary memory of the compiled
  program behind a prepared ``call`` (None where there is no such program or count);
- ``matmul(n, dtype, device) -> (call, block)``: an n×n matmul, for the measured peak;
- ``is_oom(exc) -> bool``.

The helpers below are shared: process memory on the CPU, finding the layer an
implementation holds, and the roles of the input tensors.
"""

from __future__ import annotations

import importlib
import resource
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def load(framework: str) -> ModuleType:
    return importlib.import_module(f"attnsuite.bench.frameworks.{framework}")


# --- CPU memory: the process's peak resident set --------------------------------------

def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_rss_peak() -> int | None:
    """Reset the kernel's peak-RSS mark (Linux: writing 5 to clear_refs); current RSS in bytes."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass
    current = _status_kib("VmRSS")
    return None if current is None else current * 1024


def rss_peak() -> tuple[int, str]:
    """(peak resident bytes since the last reset, method)."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024, "process peak RSS (VmHWM, reset per point)"
    # ru_maxrss is KiB on Linux, bytes on macOS, and never resets.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "process peak RSS (lifetime)"


# --- The layer an implementation holds -------------------------------------------------

def find_layer(fn, is_layer, depth: int = 2) -> Any | None:
    """``fn.layer`` if the implementation exposes it, else a layer in ``fn``'s closure.

    The built-in adapters wrap a real framework layer in a closure (directly, in a cache
    of layers, or in a helper function's closure: ``depth`` levels are searched).
    Counting that layer's variables, rather than the canonical params, is what catches a
    layer that holds another number of weights than the spec says.
    """
    layer = getattr(fn, "layer", None)
    if layer is not None:
        return layer
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        # A cache of layers (one per dtype, say) holds the same weights in each.
        for candidate in value.values() if isinstance(value, dict) else (value,):
            if is_layer(candidate):
                return candidate
            if depth > 1 and callable(candidate) and getattr(candidate, "__closure__", None):
                found = find_layer(candidate, is_layer, depth - 1)
                if found is not None:
                    return found
    return None


def keras_layer_count(layer) -> int | None:
    """Variables of a Keras layer (any backend), or None if ``layer`` is not one.

    Keras is only consulted when already imported: importing it here would pick a backend.
    """
    keras = sys.modules.get("keras")
    if keras is None or not isinstance(layer, keras.layers.Layer):
        return None
    return sum(_size(v.shape) for v in layer.weights)


def is_keras_layer(value) -> bool:
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(value, keras.layers.Layer)


def _size(shape) -> int:
    size = 1
    for dim in shape:
        size *= int(dim)
    return size


def params_count(params: dict) -> int:
    return sum(_size(p.shape) for p in params.values())


# --- Input roles -----------------------------------------------------------------------

def sources_of(inputs: dict) -> tuple[tuple, Any]:
    """The distinct input tensors to differentiate, and ``expand(sources) -> (q, k, v)``.

    Self-attention passes one tensor three times: it is one source, and its gradient is
    the sum over the three uses (as the adapters compute it).
    """
    q, k, v = inputs["query"], inputs["key"], inputs["value"]
    if k is q and v is q:
        return (q,), lambda s: (s[0], s[0], s[0])
    return (q, k, v), lambda s: tuple(s)
