"""JAX steps shared by our implementation, the built-in adapter and the kernels (contract:
``attnsuite.impls.ops``). Heads are (B, L, heads, d), JAX's own layout, which
``jax.nn.dot_product_attention`` takes as is."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attnsuite.impls import ops
from attnsuite.impls.spec import AttentionSpec


def project(spec: AttentionSpec, params, x, letter: str) -> jax.Array:
    """(B, L, E) -> (B, L, heads, d): x @ w{letter} + b{letter}, split into heads."""
    y = x @ params["w" + letter]                                 # (B, L, heads*d)
    if spec.bias:
        y = y + params["b" + letter]
    heads = spec.H if letter == "q" else spec.H_kv
    return y.reshape(*y.shape[:-1], heads, -1)                   # (B, L, heads, d)


def output(spec: AttentionSpec, params, heads) -> jax.Array:
    """(B, L_q, H, d_v) -> (B, L_q, E_o): heads merged, @ wo + bo."""
    out = heads.reshape(*heads.shape[:-2], -1) @ params["wo"]   # (B, L_q, H*d_v) @ (H*d_v, E_o)
    return out + params["bo"] if spec.bias else out


def structural_visibility(spec: AttentionSpec, L_q: int, L_k: int) -> jax.Array | None:
    """(L_q, L_k) bool, the causal and window rules, or None when the spec has neither.
    Shapes are static under ``jax.jit``: it is computed in NumPy and enters as a constant."""
    visible = ops.structural_rule(spec, np.arange, L_q, L_k)
    return None if visible is None else jnp.asarray(visible)


def visibility(spec: AttentionSpec, L_q: int, L_k: int, mask=None) -> jax.Array | None:
    """Bool, broadcastable to (B, H, L_q, L_k): the structural rules and the user's mask."""
    visible = structural_visibility(spec, L_q, L_k)
    if mask is None:
        return visible
    return mask if visible is None else visible & mask


def rope(spec: AttentionSpec, x, positions) -> jax.Array:
    """(B, L, heads, d_k) rotated at ``positions`` (L,) (contract: ``attnsuite.impls.ops``).
    ``positions`` are NumPy ints (static under ``jax.jit``, as lengths are): the angles
    are computed in NumPy float64 and enter as constants."""
    if spec.rope is None:
        return x
    tables = ops.rope_tables(spec)
    angles = np.asarray(positions, np.float64)[:, None, None] * tables.frequency   # (L, 1, d_k)
    wide = jnp.promote_types(x.dtype, jnp.float32)
    cos = jnp.asarray(np.cos(angles), wide)
    sin = jnp.asarray(np.sin(angles) * tables.sign, wide)
    x_wide = x.astype(wide)
    return (x_wide * cos + x_wide[..., tables.partner] * sin).astype(x.dtype)


def rope_qk(spec: AttentionSpec, q, k, start: int = 0):
    """q (B, L_q, H, d_k) and k (B, L_k, H_kv, d_k) rotated at their positions: key j at
    start + j, query i at start + i + L_k - L_q."""
    if spec.rope is None:
        return q, k
    L_q, L_k = q.shape[1], k.shape[1]
    return (rope(spec, q, np.arange(start + L_k - L_q, start + L_k)),
            rope(spec, k, np.arange(start, start + L_k)))


def check_mask_and_bias(mask, bias) -> None:
    ops.check_mask_and_bias(mask, bias, lambda dtype: dtype == jnp.bool_)
