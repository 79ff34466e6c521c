"""The canonical weight layout (SPEC section 2): names, shapes, a seeded generator and
the parameter-count formula.

``x @ W`` is the convention: ``wq`` maps the query's E features to H*d_k columns, and
head h owns columns ``[h*d_k, (h+1)*d_k)``.
"""

from __future__ import annotations

import numpy as np

from attnsuite.impls.spec import AttentionSpec

def weight_shapes(spec: AttentionSpec) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight the spec has, in canonical order."""
    s = spec
    shapes = {
        "wq": (s.E, s.H * s.d_k),
        "wk": (s.E_k, s.H_kv * s.d_k),
        "wv": (s.E_v, s.H_kv * s.d_v),
        "wo": (s.H * s.d_v, s.E_o),
    }
    if s.bias:
        shapes.update({
            "bq": (s.H * s.d_k,),
            "bk": (s.H_kv * s.d_k,),
            "bv": (s.H_kv * s.d_v,),
            "bo": (s.E_o,),
        })
    return shapes


def param_count(spec: AttentionSpec) -> int:
    """E*H*d_k + E_k*H_kv*d_k + E_v*H_kv*d_v + H*d_v*E_o (+ the biases)."""
    return int(sum(np.prod(shape) for shape in weight_shapes(spec).values()))


def init_weights(spec: AttentionSpec, seed: int = 0, dtype=np.float64) -> dict[str, np.ndarray]:
    """Seeded canonical weights, scaled so that the logits are neither tiny nor saturated.

    With unit-variance inputs, each projected feature has variance about 1 (weights drawn
    with standard deviation 1/sqrt(fan_in)), so the scaled logits have a standard
    deviation near 1: softmax rows are neither uniform nor one-hot. Biases are small but
    nonzero, so that a dropped bias shows.
    """
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in weight_shapes(spec).items():
        if name.startswith("w"):
            weights[name] = rng.standard_normal(shape) / np.sqrt(shape[0])
        else:
            weights[name] = 0.1 * rng.standard_normal(shape)
    return {name: w.astype(dtype) for name, w in weights.items()}


def check_weights(spec: AttentionSpec, weights: dict) -> None:
    """Raise ValueError naming the weight that is missing, unexpected or misshapen."""
    expected = weight_shapes(spec)
    missing = [n for n in expected if n not in weights]
    if missing:
        raise ValueError(f"weights: missing {missing} for {spec}")
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise ValueError(f"weights: unexpected {extra} for {spec} (bias={spec.bias})")
    for name, shape in expected.items():
        got = tuple(np.shape(weights[name]))
        if got != shape:
            raise ValueError(f"weights[{name!r}]: expected shape {shape}, got {got}")
