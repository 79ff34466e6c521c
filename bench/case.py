"""One implementation on one configuration, ready to time: the harness's worker, the
pytest-benchmark tests and the agreement check all build their calls here, so they time
the very same call.

Weights and inputs are seeded NumPy arrays converted once by the framework's adapter
(``params``/``tensor``): nothing is converted inside the timed region.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from types import ModuleType
from typing import Any, Callable

import numpy as np

from attnsuite.bench import frameworks
from attnsuite.bench.sweeps import Config
from attnsuite.impls.backends import load_backend
from attnsuite.impls.entry import Entry
from attnsuite.impls.registry import resolve
from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.calling import make_fn
from attnsuite.impls.weights import init_weights


def input_arrays(spec: AttentionSpec, config: Config, seed: int = 0) -> dict[str, np.ndarray]:
    """Unit-normal query/key/value and output cotangent; self-attention reuses the query."""
    rng = np.random.default_rng(seed)
    c = config
    query = rng.standard_normal((c.batch, c.L_q, spec.E))
    if c.self_attention:
        key = value = query
    else:
        key = rng.standard_normal((c.batch, c.L_k, spec.E_k))
        value = rng.standard_normal((c.batch, c.L_k, spec.E_v))
    return {"query": query, "key": key, "value": value,
            "d_out": rng.standard_normal((c.batch, c.L_q, spec.E_o))}


@dataclasses.dataclass
class Workload:
    """One implementation built for one configuration: weights and inputs converted, ready to
    time (the benchmark's unit; a conformance case is ``attnsuite.conformance.cases.Case``)."""

    entry: Entry
    config: Config
    spec: AttentionSpec
    fn: Callable
    params: dict
    inputs: dict[str, Any]
    fw: ModuleType       # bench.frameworks.<framework>

    @property
    def core(self) -> bool:
        """An attention core timed alone (``attnsuite.impls.kernels``): no weights, no projections."""
        return self.entry.kind == "kernel"

    def prepare(self, pass_: str, compile: str):
        """(call, block) for ``pass_`` ("forward" / "forward_backward") in ``compile`` mode."""
        return self.fw.prepare(self.fn, self.params, self.inputs, pass_, compile)

    def count_params(self) -> tuple[int, str]:
        """(count, source): the variables of the layer the implementation holds
        (``"layer"``), else the canonical params it is handed (``"params"``).

        The layer is ``fn.layer``, one found in ``fn``'s closure (the built-in adapters),
        or for our implementations the module's ``MultiHeadAttention(spec)`` class. Call
        after a first call: Keras layers create their weights lazily.
        """
        layer = frameworks.find_layer(self.fn, self.fw.is_layer)
        if layer is None:
            layer = self._our_layer()
        if layer is None:
            return frameworks.params_count(self.params), "params"
        return self.fw.layer_params(layer, self.inputs), "layer"

    def _our_layer(self):
        if self.entry.kind != "ours":
            return None
        module = importlib.import_module(self.entry.target.split(":")[0])
        layer_class = getattr(module, "MultiHeadAttention", None)
        return layer_class(self.spec) if layer_class is not None else None


@functools.lru_cache(maxsize=1)  # the kernels of one framework take turns at each shape
def head_arrays(spec: AttentionSpec, config: Config, layout: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Already projected query/key/value heads and the output cotangent, for an attention
    core (``attnsuite.impls.kernels``), in ``layout`` ("BLHD" or "BHLD"). float32 draws: at GPU
    sizes (B=4, L=16k, 32 heads) a float64 array alone would take a gigabyte of host memory.
    Treat the arrays as read-only: they are cached."""
    rng = np.random.default_rng(seed)
    c, s = config, spec
    shapes = {"query": (c.batch, c.L_q, s.H, s.d_k), "key": (c.batch, c.L_k, s.H_kv, s.d_k),
              "value": (c.batch, c.L_k, s.H_kv, s.d_v), "d_out": (c.batch, c.L_q, s.H, s.d_v)}
    arrays = {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()}
    if layout == "BHLD":
        arrays = {name: np.ascontiguousarray(a.swapaxes(1, 2)) for name, a in arrays.items()}
    elif layout != "BLHD":
        raise ValueError(f"layout: expected BLHD or BHLD, got {layout!r}")
    return arrays


def build(impl: str | tuple[Entry, Callable], config: Config) -> Workload:
    """Resolve ``impl`` (a name, or an already resolved (entry, factory)) and build the case.

    Raises ``PluginError`` for a name that does not resolve and ``Unsupported`` for a case
    the implementation or the adapter declines. An attention core (kind "kernel") gets
    projected heads and no params; its key and value are tensors of their own even when
    the lengths are equal (they are different projections in a layer).
    """
    entry, factory = resolve(impl) if isinstance(impl, str) else impl
    backend = load_backend(entry.framework)
    spec = config.spec()
    c = config
    fn = make_fn(factory, spec, form="self" if c.self_attention else "qkv", dtype=c.dtype,
                 device=c.device)
    if entry.kind == "kernel":  # a core: see Workload.core
        arrays = head_arrays(spec, config, fn.layout)
        inputs = {name: backend.tensor(a, c.dtype, c.device) for name, a in arrays.items()}
        return Workload(entry, config, spec, fn, {}, inputs, frameworks.load(entry.framework))
    arrays = input_arrays(spec, config)
    query = backend.tensor(arrays["query"], c.dtype, c.device)
    if c.self_attention:
        key = value = query
    else:
        key, value = (backend.tensor(arrays[name], c.dtype, c.device) for name in ("key", "value"))
    inputs = {"query": query, "key": key, "value": value,
              "d_out": backend.tensor(arrays["d_out"], c.dtype, c.device)}
    params = backend.params(init_weights(spec, seed=0), c.dtype, c.device)
    return Workload(entry, config, spec, fn, params, inputs, frameworks.load(entry.framework))
