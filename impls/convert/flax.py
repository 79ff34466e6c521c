"""Canonical weights <-> flax's attention params, both ways.

``flax.linen.MultiHeadDotProductAttention`` and ``flax.nnx.MultiHeadAttention`` hold the
same tree: ``query``/``key``/``value`` with ``kernel`` (in_features, heads, head_size)
and ``bias`` (heads, head_size), and ``out`` with ``kernel`` (H, d_v, E_o) and ``bias``
(E_o,). Head h is the canonical columns ``[h*d, (h+1)*d)``, so every conversion is a
reshape: exact, and differentiable when given JAX arrays (``.reshape`` is the array's
own method, so NumPy arrays stay NumPy).

- linen: ``to_linen`` gives the ``"params"`` collection (``layer.apply({"params": p}, ...)``).
- nnx: ``to_nnx`` fills a copy of the layer's ``nnx.state(layer, nnx.Param)``, ready for
  ``nnx.update(layer, state)`` or ``nnx.merge(graphdef, state, ...)``.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import check_weights, weight_shapes

# Canonical name -> (flax layer, leaf): "wq" -> ("query", "kernel"), "bo" -> ("out", "bias").
_LAYER = {"q": "query", "k": "key", "v": "value", "o": "out"}
_LEAF = {"w": "kernel", "b": "bias"}


def _place(name: str) -> tuple[str, str]:
    return _LAYER[name[1]], _LEAF[name[0]]


def flax_shapes(spec: AttentionSpec) -> dict[str, tuple[int, ...]]:
    """Canonical name -> the shape of its flax leaf (heads split out of the columns)."""
    s = spec
    shapes = {"wq": (s.E, s.H, s.d_k), "wk": (s.E_k, s.H_kv, s.d_k), "wv": (s.E_v, s.H_kv, s.d_v),
              "wo": (s.H, s.d_v, s.E_o), "bq": (s.H, s.d_k), "bk": (s.H_kv, s.d_k),
              "bv": (s.H_kv, s.d_v), "bo": (s.E_o,)}
    return {name: shapes[name] for name in weight_shapes(spec)}


def to_linen(spec: AttentionSpec, weights) -> dict:
    """Canonical weights -> the nested params dict of either flax layer."""
    check_weights(spec, weights)
    params: dict = {}
    for name, shape in flax_shapes(spec).items():
        layer, leaf = _place(name)
        params.setdefault(layer, {})[leaf] = weights[name].reshape(shape)
    return params


def from_linen(spec: AttentionSpec, params) -> dict[str, np.ndarray]:
    """The nested params dict of either flax layer -> canonical NumPy weights."""
    canonical = weight_shapes(spec)
    weights = {}
    for name, shape in flax_shapes(spec).items():
        layer, leaf = _place(name)
        value = np.asarray(params[layer][leaf])
        if value.shape != shape:
            raise ValueError(f"{layer}/{leaf}: expected shape {shape} for {spec}, "
                             f"got {value.shape}")
        weights[name] = value.reshape(canonical[name])
    return weights


def to_nnx(spec: AttentionSpec, weights, state: nnx.State) -> nnx.State:
    """A copy of the nnx param ``state`` holding the canonical weights."""
    filled = jax.tree.map(lambda leaf: leaf, state)  # a new State; ``state`` stays as it is
    nnx.replace_by_pure_dict(filled, to_linen(spec, weights))
    return filled


def from_nnx(spec: AttentionSpec, state: nnx.State) -> dict[str, np.ndarray]:
    """An nnx param state (``nnx.state(layer, nnx.Param)``) -> canonical NumPy weights."""
    return from_linen(spec, nnx.to_pure_dict(state))
