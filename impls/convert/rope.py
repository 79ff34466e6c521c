"""Moving weights between the two RoPE layouts (SPEC 2).

A layer that rotates interleaved pairs (2m, 2m + 1) computes exactly what a layer that
rotates half-split pairs (m, m + r/2) computes, once the columns of ``wq`` and ``wk``
(and ``bq``, ``bk``) are permuted within each head. That permutation is the step of
converting Meta's original Llama checkpoints for HF transformers, and the step a port
forgets.
"""

from __future__ import annotations

import numpy as np

from attnsuite.impls.spec import AttentionSpec


def _head_order(d_k: int, rotary_dim: int) -> np.ndarray:
    """Half-split feature i of a head is interleaved feature order[i]."""
    return np.concatenate([np.arange(0, rotary_dim, 2), np.arange(1, rotary_dim, 2),
                           np.arange(rotary_dim, d_k)])


def _permute(weights: dict, spec: AttentionSpec, order: np.ndarray) -> dict:
    out = dict(weights)
    for name, heads in (("q", spec.H), ("k", spec.H_kv)):
        columns = (np.arange(heads)[:, None] * spec.d_k + order[None, :]).ravel()
        for kind in ("w", "b"):
            if kind + name in out:
                out[kind + name] = np.asarray(out[kind + name])[..., columns]
    return out


def interleaved_to_half(weights: dict, spec: AttentionSpec) -> dict:
    """Canonical weights of an interleaved-RoPE layer -> those of the half-split layer that
    computes the same function (``spec`` gives the head sizes and ``rotary_dim``)."""
    return _permute(weights, spec, _head_order(spec.d_k, spec.rotary_dim))


def half_to_interleaved(weights: dict, spec: AttentionSpec) -> dict:
    """The inverse of ``interleaved_to_half``."""
    return _permute(weights, spec, np.argsort(_head_order(spec.d_k, spec.rotary_dim)))
