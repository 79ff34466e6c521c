"""TensorFlow steps shared by our implementations (contract: ``attnsuite.impls.ops``).
Heads are (B, L, heads, d), so splitting and merging them is a reshape.

float16 and bfloat16 tensors are stored in their dtype but contracted in float32, as
sound low-precision kernels do: TensorFlow's CPU einsum and matmul would accumulate in 16 bits.
"""

from __future__ import annotations

import tensorflow as tf

from attnsuite.impls import ops
from attnsuite.impls.spec import AttentionSpec

# The dtype each 16-bit dtype is contracted in.
_ACCUMULATE = {tf.float16: tf.float32, tf.bfloat16: tf.float32}


def widen(*tensors):
    """Tensors in their accumulation dtype (unchanged unless 16-bit)."""
    return [tf.cast(t, _ACCUMULATE.get(t.dtype, t.dtype)) for t in tensors]


def length(x):
    """Dimension 1 of ``x`` (B, L, ...): a Python int where the graph knows it, so that
    nothing is computed for it per call; else a scalar tensor."""
    return x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]


def _leading(x) -> list:
    """(B, L) of ``x``, each a Python int where the graph knows it."""
    return [x.shape[0] if x.shape[0] is not None else tf.shape(x)[0], length(x)]


def _dense(spec: AttentionSpec, params, x, letter: str):
    """(B, L, ...) -> (B*L, m): x @ w{letter} + b{letter}, accumulated wide and rounded once
    to x's dtype. One 2-D MatMul, whose gradients are MatMuls too (an Einsum or a
    broadcast BatchMatMul costs reshapes and reductions in the backward pass)."""
    wide_x, w = widen(x, params["w" + letter])
    y = tf.matmul(tf.reshape(wide_x, [-1, w.shape[0]]), w)       # (B*L, n) @ (n, m)
    if spec.bias:
        y = y + widen(params["b" + letter])[0]
    return tf.cast(y, x.dtype)


def project(spec: AttentionSpec, params, x, letter: str):
    """(B, L, E) -> (B, L, heads, d): x @ w{letter} + b{letter}, split into heads."""
    heads = spec.H if letter == "q" else spec.H_kv
    y = _dense(spec, params, x, letter)                          # (B*L, heads*d)
    return tf.reshape(y, _leading(x) + [heads, -1])              # (B, L, heads, d)


def output(spec: AttentionSpec, params, heads):
    """(B, L_q, H, d_v) -> (B, L_q, E_o): heads merged, @ wo + bo."""
    y = _dense(spec, params, heads, "o")                         # (B*L_q, E_o)
    return tf.reshape(y, _leading(heads) + [spec.E_o])           # (B, L_q, E_o)


def structural_visibility(spec: AttentionSpec, L_q, L_k):
    """(L_q, L_k) bool from the causal and window rules, or None when the spec has neither.
    L_q and L_k may be tensors (lengths unknown when a graph is traced)."""
    return ops.structural_rule(spec, tf.range, L_q, L_k)


def visibility(spec: AttentionSpec, L_q, L_k, mask):
    """Bool, broadcastable to (B, H, L_q, L_k): the structural rules and the user's mask."""
    structural = structural_visibility(spec, L_q, L_k)
    if mask is None or structural is None:
        return structural if mask is None else mask
    return tf.logical_and(mask, structural)


def rope(spec: AttentionSpec, x, positions):
    """(B, L, heads, d_k) rotated at ``positions`` (L,) (contract: ``attnsuite.impls.ops``)."""
    if spec.rope is None:
        return x
    tables = ops.rope_tables(spec)
    angles = tf.cast(positions, tf.float64)[:, None, None] * tables.frequency   # (L, 1, d_k)
    (wide,) = widen(x)
    cos = tf.cast(tf.cos(angles), wide.dtype)
    sin = tf.cast(tf.sin(angles) * tables.sign, wide.dtype)
    return tf.cast(wide * cos + tf.gather(wide, tables.partner, axis=-1) * sin, x.dtype)


def rope_qk(spec: AttentionSpec, q, k, start=0):
    """q (B, L_q, H, d_k) and k (B, L_k, H_kv, d_k) rotated at their positions: key j at
    start + j, query i at start + i + L_k - L_q. Lengths and ``start`` may be tensors."""
    if spec.rope is None:
        return q, k
    L_q, L_k = length(q), length(k)
    return (rope(spec, q, tf.range(L_q) + (start + L_k - L_q)),
            rope(spec, k, tf.range(L_k) + start))


def check_mask_and_bias(mask, bias) -> None:
    ops.check_mask_and_bias(mask, bias, lambda dtype: dtype == tf.bool)
