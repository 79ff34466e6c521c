"""TensorFlow steps shared by our implementations (contract: ``attnsuite.impls.ops``).
Heads are (B, L, heads, d), so splitting and merging them is a reshape.

float16 and bfloat16 tensors are stored in their dtype but contracted in float32, as
sound low-precision kernels do: TensorFlow's CPU einsum would accumulate in 16 bits.
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


def _dense(spec: AttentionSpec, params, x, letter: str):
    """x @ w{letter} + b{letter}, accumulated wide and rounded once to x's dtype."""
    wide_x, w = widen(x, params["w" + letter])
    y = tf.einsum("bli,io->blo", wide_x, w)
    if spec.bias:
        y = y + widen(params["b" + letter])[0]
    return tf.cast(y, x.dtype)


def project(spec: AttentionSpec, params, x, letter: str):
    """(B, L, E) -> (B, L, heads, d): x @ w{letter} + b{letter}, split into heads."""
    y = _dense(spec, params, x, letter)                          # (B, L, heads*d)
    heads = spec.H if letter == "q" else spec.H_kv
    shape = tf.shape(y)
    return tf.reshape(y, [shape[0], shape[1], heads, -1])        # (B, L, heads, d)


def output(spec: AttentionSpec, params, heads):
    """(B, L_q, H, d_v) -> (B, L_q, E_o): heads merged, @ wo + bo."""
    shape = tf.shape(heads)
    merged = tf.reshape(heads, [shape[0], shape[1], -1])         # (B, L_q, H*d_v)
    return _dense(spec, params, merged, "o")


def structural_visibility(spec: AttentionSpec, L_q, L_k):
    """(L_q, L_k) bool from the causal and window rules, or None when the spec has neither.
    L_q and L_k may be tensors (lengths unknown when a graph is traced)."""
    return ops.structural_rule(spec, tf.range(L_q)[:, None], tf.range(L_k)[None, :], L_q, L_k)


def visibility(spec: AttentionSpec, L_q, L_k, mask):
    """Bool, broadcastable to (B, H, L_q, L_k): the structural rules and the user's mask."""
    structural = structural_visibility(spec, L_q, L_k)
    if mask is None or structural is None:
        return structural if mask is None else mask
    return tf.logical_and(mask, structural)


def check_mask_and_bias(mask, bias) -> None:
    ops.check_mask_and_bias(mask, bias, lambda dtype: dtype == tf.bool)
