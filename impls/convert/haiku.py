"""Canonical weights <-> haiku's ``hk.MultiHeadAttention`` params, both ways.

``hk.transform``'s params for the layer named ``NAME`` are ``NAME/query``, ``NAME/key``,
``NAME/value`` and ``NAME/linear`` (the output projection), each ``{"w": (in, out),
"b": (out,)}`` (no ``"b"`` with ``with_bias=False``). haiku applies ``x @ w`` and splits
heads as ``[h*d, (h+1)*d)``: the canonical layout itself, so converting only renames,
exact both ways and differentiable.
"""

from __future__ import annotations

import numpy as np

from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import check_weights, weight_shapes

DEFAULT_NAME = "multi_head_attention"  # haiku's module name when none is given
SUBMODULES = {"q": "query", "k": "key", "v": "value", "o": "linear"}


def _place(name: str, module: str) -> tuple[str, str]:
    return f"{module}/{SUBMODULES[name[1]]}", name[0]


def to_haiku(spec: AttentionSpec, weights, module: str = DEFAULT_NAME) -> dict:
    """Canonical weights -> the params ``hk.transform(...).apply`` takes."""
    check_weights(spec, weights)
    params: dict = {}
    for name in weight_shapes(spec):
        path, leaf = _place(name, module)
        params.setdefault(path, {})[leaf] = weights[name]
    return params


def from_haiku(spec: AttentionSpec, params, module: str = DEFAULT_NAME) -> dict[str, np.ndarray]:
    """haiku params of the layer named ``module`` -> canonical NumPy weights."""
    weights = {}
    for name, shape in weight_shapes(spec).items():
        path, leaf = _place(name, module)
        value = params.get(path, {}).get(leaf)
        if value is None or np.shape(value) != shape:
            got = None if value is None else np.shape(value)
            raise ValueError(f"{path}/{leaf}: expected shape {shape} for {spec}, got {got}")
        weights[name] = np.asarray(value)
    return weights
