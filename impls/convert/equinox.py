"""Canonical weights <-> ``equinox.nn.MultiheadAttention``, both ways.

The layer holds four ``eqx.nn.Linear``: ``query_proj``, ``key_proj``, ``value_proj`` and
``output_proj``, each a ``weight`` of shape (out, in) applied as ``weight @ x`` and a
``bias`` (out,), or ``None`` without bias. Head h is rows ``[h*d, (h+1)*d)`` of the
projection, i.e. the canonical columns, so every weight is the canonical one transposed:
exact, and differentiable when given JAX arrays (``.T`` is the array's own, so NumPy
arrays stay NumPy).
"""

from __future__ import annotations

import equinox as eqx
import numpy as np

from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import check_weights, weight_shapes

# Canonical projection letter -> the layer's Linear attribute.
LINEARS = {"q": "query_proj", "k": "key_proj", "v": "value_proj", "o": "output_proj"}
_LEAF = {"w": "weight", "b": "bias"}


def _leaf(layer, name: str):
    return getattr(getattr(layer, LINEARS[name[1]]), _LEAF[name[0]])


def to_equinox(spec: AttentionSpec, weights, layer: eqx.nn.MultiheadAttention) -> eqx.nn.MultiheadAttention:
    """A copy of ``layer`` (built for ``spec``) holding the canonical weights."""
    check_weights(spec, weights)
    names = list(weight_shapes(spec))
    for name in names:
        if _leaf(layer, name) is None:
            raise ValueError(f"{LINEARS[name[1]]}.{_LEAF[name[0]]}: the layer has none, but "
                             f"{spec} has the weight {name!r} (build it with biases)")
    values = [weights[name].T for name in names]
    return eqx.tree_at(lambda m: [_leaf(m, name) for name in names], layer, values)


def from_equinox(spec: AttentionSpec, layer: eqx.nn.MultiheadAttention) -> dict[str, np.ndarray]:
    """An ``equinox.nn.MultiheadAttention`` -> canonical NumPy weights."""
    weights = {}
    for name, shape in weight_shapes(spec).items():
        leaf = _leaf(layer, name)
        value = None if leaf is None else np.asarray(leaf).T
        if value is None or value.shape != shape:
            got = None if leaf is None else value.shape
            raise ValueError(f"{LINEARS[name[1]]}.{_LEAF[name[0]]}: expected shape {shape[::-1]} "
                             f"for {spec}, got {got if got is None else got[::-1]}")
        weights[name] = value
    return weights
