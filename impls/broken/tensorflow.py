"""Broken TensorFlow implementations: the classic tutorial layer's bugs, and a few more.

``Attention`` is a correct layer in plain TensorFlow ops, one method per step; each
factory below returns a subclass that gets exactly one step wrong, in the code a person
would plausibly write. The catalog (``attnsuite.impls.broken``) says which check must catch each.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from attnsuite.impls.errors import Unsupported


class Attention:
    """SPEC section 3 in TensorFlow, split into the steps a bug can hide in."""

    def __init__(self, spec):
        if spec.rope is not None:   # the RoPE and cache bugs are the PyTorch layer's
            raise Unsupported("rotary positions: not implemented by this layer")
        self.spec = spec

    def __call__(self, params, query, key, value, mask=None, bias=None, training=False, seed=None):
        s = self.spec
        q = self.split_heads(self.project(query, params, "q"), s.H, s.d_k)
        k = self.expand_kv(self.split_heads(self.project(key, params, "k"), s.H_kv, s.d_k))
        v = self.expand_kv(self.split_heads(self.project(value, params, "v"), s.H_kv, s.d_v))
        logits = self.logits(q, k)
        if bias is not None:
            logits = logits + bias
        logits = self.masked(logits, mask, self.structural_mask(query.shape[1], key.shape[1]))
        # Half precision runs the softmax in float32, as fused kernels do.
        wide = tf.float32 if logits.dtype in (tf.float16, tf.bfloat16) else logits.dtype
        probs = tf.cast(self.softmax(tf.cast(logits, wide)), logits.dtype)
        probs = self.dropout(probs, training, seed)
        return self.project(self.merge_heads(self.combine(probs, v)), params, "o")

    def project(self, x, params, name):
        y = x @ params["w" + name]
        return y + params["b" + name] if self.spec.bias else y

    def split_heads(self, x, heads, size):
        """(B, L, heads*size) -> (B, heads, L, size)."""
        x = tf.reshape(x, (tf.shape(x)[0], -1, heads, size))
        return tf.transpose(x, (0, 2, 1, 3))

    def merge_heads(self, x):
        """(B, H, L, d_v) -> (B, L, H*d_v)."""
        x = tf.transpose(x, (0, 2, 1, 3))
        return tf.reshape(x, (tf.shape(x)[0], -1, self.spec.H * self.spec.d_v))

    def expand_kv(self, x):
        """Query head h reads key/value head h // group_size."""
        return tf.repeat(x, self.spec.group_size, axis=1)

    def logits(self, q, k):
        return self.softcap(tf.matmul(q, k, transpose_b=True) * self.spec.logit_scale)

    def softcap(self, s):
        c = self.spec.softcap
        return s if c is None else c * tf.tanh(s / c)

    def structural_mask(self, L_q, L_k):
        """(L_q, L_k) bool: the causal and window rules (True = visible)."""
        s = self.spec
        i = tf.range(L_q)[:, None]
        j = tf.range(L_k)[None, :]
        if s.causal == "bottom_right":
            i = i + (L_k - L_q)
        visible = tf.ones((L_q, L_k), tf.bool)
        if s.causal is not None:
            visible &= j <= i
        if s.window is not None:
            left, right = s.window
            visible &= (j - i >= -left) & (j - i <= right)
        return visible

    def masked(self, logits, mask, visible):
        """Invisible keys' logits set to -inf (mask: True = may attend)."""
        if mask is not None:
            visible = visible & mask
        return tf.where(visible, logits, tf.constant(-np.inf, logits.dtype))

    def softmax(self, logits):
        """Softmax over each row's finite logits; a row with none (fully masked) is zeros."""
        row_max = tf.stop_gradient(tf.reduce_max(logits, axis=-1, keepdims=True))
        row_max = tf.where(tf.math.is_finite(row_max), row_max, tf.zeros_like(row_max))
        e = tf.exp(logits - row_max)
        total = tf.reduce_sum(e, axis=-1, keepdims=True)
        return e / tf.where(total > 0, total, tf.ones_like(total))

    def dropout(self, probs, training, seed):
        if not training or self.spec.dropout == 0:
            return probs
        rate = self.spec.dropout
        keep = tf.random.stateless_uniform(tf.shape(probs), (seed or 0, 0)) >= rate
        return tf.where(keep, probs / (1 - rate), tf.zeros_like(probs))

    def combine(self, probs, v):
        return tf.matmul(probs, v)


# --- The tutorial layer's bugs ---------------------------------------------------------

def output_p_times_v_transposed(spec):
    """The output written as P·Vᵀ, as the tutorial's formula has it, instead of P·V."""

    class Layer(Attention):
        def combine(self, probs, v):
            return tf.matmul(probs, v, transpose_b=True)

    return Layer(spec)


def own_position_excluded(spec):
    """Each query is kept from attending to its own key position (j == i)."""

    class Layer(Attention):
        def structural_mask(self, L_q, L_k):
            not_self = tf.range(L_q)[:, None] != tf.range(L_k)[None, :]
            return super().structural_mask(L_q, L_k) & not_self

    return Layer(spec)


def projections_sized_d_k(spec):
    """Projections sized d_k (one head's worth) while the heads are split as num_heads·d_k."""

    class Layer(Attention):
        def project(self, x, params, name):
            if name == "o":
                return super().project(x, params, name)
            width = self.spec.d_v if name == "v" else self.spec.d_k
            y = x @ params["w" + name][:, :width]
            return y + params["b" + name][:width] if self.spec.bias else y

    return Layer(spec)


def heads_merged_without_batch(spec):
    """Heads merged into a (B·L_q, H·d_v) shape that drops the batch axis."""

    class Layer(Attention):
        def merge_heads(self, x):
            x = tf.transpose(x, (0, 2, 1, 3))
            return tf.reshape(x, (-1, self.spec.H * self.spec.d_v))

    return Layer(spec)


def dropout_at_inference(spec):
    """Dropout applied to the attention weights whether training or not."""

    class Layer(Attention):
        def dropout(self, probs, training, seed):
            return tf.nn.dropout(probs, rate=self.spec.dropout, seed=seed)

    return Layer(spec)


def mask_polarity_inverted(spec):
    """The mask added as mask·(−1e9), which drops the keys a True (= attend) mask keeps."""

    class Layer(Attention):
        def masked(self, logits, mask, visible):
            if mask is not None:
                logits += tf.cast(mask, logits.dtype) * -1e9
            return super().masked(logits, None, visible)

    return Layer(spec)


def scale_as_float32_tensor(spec):
    """The scale built as a float32 tensor, which TensorFlow refuses to multiply any other dtype by."""

    class Layer(Attention):
        def logits(self, q, k):
            scale = tf.constant(self.spec.logit_scale, tf.float32)
            return self.softcap(tf.matmul(q, k, transpose_b=True) * scale)

    return Layer(spec)


# --- Bugs only gradients or some cases reveal -------------------------------------------

def custom_gradient_forgets_scale(spec):
    """A tf.custom_gradient for scale·QKᵀ whose backward leaves out the scale."""

    @tf.custom_gradient
    def scaled_scores(q, k):
        def backward(d_s):
            return tf.matmul(d_s, k), tf.matmul(d_s, q, transpose_a=True)

        return tf.matmul(q, k, transpose_b=True) * spec.logit_scale, backward

    class Layer(Attention):
        def logits(self, q, k):
            return self.softcap(scaled_scores(q, k))

    return Layer(spec)


def window_off_by_one(spec):
    """The sliding window's left edge written with > instead of >=: one key too few."""

    class Layer(Attention):
        def structural_mask(self, L_q, L_k):
            s = self.spec
            i = tf.range(L_q)[:, None] + (L_k - L_q if s.causal == "bottom_right" else 0)
            j = tf.range(L_k)[None, :]
            visible = tf.ones((L_q, L_k), tf.bool)
            if s.causal is not None:
                visible &= j <= i
            if s.window is not None:
                left, right = s.window
                visible &= (j - i > -left) & (j - i <= right)
            return visible

    return Layer(spec)


def softcap_after_mask(spec):
    """Softcap applied last, to the biased and masked logits: masked keys come back as −c."""

    class Layer(Attention):
        def logits(self, q, k):
            return tf.matmul(q, k, transpose_b=True) * self.spec.logit_scale

        def masked(self, logits, mask, visible):
            return self.softcap(super().masked(logits, mask, visible))

    return Layer(spec)


def softmax_in_float32(spec):
    """The softmax computed in float32 "for stability" whatever the input dtype."""

    class Layer(Attention):
        def softmax(self, logits):
            return tf.cast(super().softmax(tf.cast(logits, tf.float32)), logits.dtype)

    return Layer(spec)
