"""Broken JAX implementations: bugs in alignment, numerics, gradients and precision.

``Attention`` is a correct layer in plain ``jax.numpy``, one method per step; each
factory below returns a subclass that gets exactly one step wrong, in the code a person
would plausibly write. The catalog (``attnsuite.impls.broken``) says which check must catch each.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from attnsuite.impls.errors import Unsupported


def masked_softmax(logits):
    """Softmax over each row's finite logits; a row with none (fully masked) is zeros."""
    row_max = jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0)
    e = jnp.exp(logits - row_max)
    total = e.sum(axis=-1, keepdims=True)
    return e / jnp.where(total > 0, total, 1)


class Attention:
    """SPEC section 3 in JAX, split into the steps a bug can hide in."""

    def __init__(self, spec):
        if spec.rope is not None:   # the RoPE and cache bugs are the PyTorch layer's
            raise Unsupported("rotary positions: not implemented by this layer")
        self.spec = spec

    def __call__(self, params, query, key, value, mask=None, bias=None, training=False, seed=None):
        s = self.spec
        q = self.split_heads(self.project(query, params, "q"), s.H)
        k = self.expand_kv(self.split_heads(self.project(key, params, "k"), s.H_kv))
        v = self.expand_kv(self.split_heads(self.project(value, params, "v"), s.H_kv))
        logits = self.logits(q, k)
        if bias is not None:
            logits = logits + bias
        logits = self.masked(logits, mask, self.structural_mask(query.shape[1], key.shape[1]))
        # Half precision runs the softmax in float32, as fused kernels do.
        wide = jnp.promote_types(logits.dtype, jnp.float32)
        probs = self.dropout(self.softmax(logits.astype(wide)).astype(logits.dtype), training, seed)
        return self.project(self.merge_heads(probs @ v), params, "o")

    def project(self, x, params, name):
        y = x @ params["w" + name]
        return y + params["b" + name] if self.spec.bias else y

    def split_heads(self, x, heads):
        """(B, L, heads*d) -> (B, heads, L, d)."""
        B, L, width = x.shape
        return x.reshape(B, L, heads, width // heads).transpose(0, 2, 1, 3)

    def merge_heads(self, x):
        """(B, H, L, d_v) -> (B, L, H*d_v)."""
        B, H, L, d = x.shape
        return x.transpose(0, 2, 1, 3).reshape(B, L, H * d)

    def expand_kv(self, x):
        """Query head h reads key/value head h // group_size."""
        return jnp.repeat(x, self.spec.group_size, axis=1)

    def logits(self, q, k):
        return self.softcap(q @ k.swapaxes(-2, -1) * self.spec.logit_scale)

    def softcap(self, s):
        c = self.spec.softcap
        return s if c is None else c * jnp.tanh(s / c)

    def structural_mask(self, L_q, L_k):
        """(L_q, L_k) bool: the causal and window rules (True = visible), from static shapes."""
        s = self.spec
        i = np.arange(L_q)[:, None]
        j = np.arange(L_k)[None, :]
        if s.causal == "bottom_right":
            i = i + (L_k - L_q)
        visible = np.ones((L_q, L_k), bool)
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
        return jnp.where(visible, logits, -jnp.inf)

    def softmax(self, logits):
        return masked_softmax(logits)

    def dropout(self, probs, training, seed):
        if not training or self.spec.dropout == 0:
            return probs
        rate = self.spec.dropout
        keep = jax.random.bernoulli(jax.random.key(seed or 0), 1 - rate, probs.shape)
        return jnp.where(keep, probs / (1 - rate), 0)


# --- Bugs only some cases reveal ----------------------------------------------------------

def bottom_right_as_top_left(spec):
    """The causal rule written as np.tril of the (L_q, L_k) block, which is top-left aligned."""

    class Layer(Attention):
        def structural_mask(self, L_q, L_k):
            s = self.spec
            i = np.arange(L_q)[:, None]
            j = np.arange(L_k)[None, :]
            visible = np.ones((L_q, L_k), bool)
            if s.causal is not None:
                visible = np.tril(visible)
            if s.window is not None:
                left, right = s.window
                visible &= (j - i >= -left) & (j - i <= right)
            return visible

    return Layer(spec)


def custom_scale_ignored(spec):
    """The logits always scaled by 1/sqrt(d_k), whatever scale the spec asks for."""

    class Layer(Attention):
        def logits(self, q, k):
            return self.softcap(q @ k.swapaxes(-2, -1) / math.sqrt(self.spec.d_k))

    return Layer(spec)


def output_bias_dropped(spec):
    """The output projection applied without its bias bo."""

    class Layer(Attention):
        def project(self, x, params, name):
            if name == "o":
                return x @ params["wo"]
            return super().project(x, params, name)

    return Layer(spec)


def softmax_without_max_subtraction(spec):
    """exp(logits) / sum(exp(logits)) with no row max subtracted: overflows on large logits."""

    class Layer(Attention):
        def softmax(self, logits):
            e = jnp.exp(logits)
            total = e.sum(axis=-1, keepdims=True)
            return e / jnp.where(total > 0, total, 1)

    return Layer(spec)


# --- Bugs only gradients reveal ------------------------------------------------------------

@jax.custom_vjp
def _softmax_diagonal_vjp(logits):
    return masked_softmax(logits)


def _softmax_fwd(logits):
    p = masked_softmax(logits)
    return p, p


def _softmax_bwd(p, g):
    return (g * p * (1 - p),)  # only the Jacobian's diagonal: the -p_i p_j terms are missing


_softmax_diagonal_vjp.defvjp(_softmax_fwd, _softmax_bwd)


def softmax_vjp_diagonal_only(spec):
    """A jax.custom_vjp softmax whose backward uses dp_i/ds_i = p_i(1 − p_i) and nothing else."""

    class Layer(Attention):
        def softmax(self, logits):
            return _softmax_diagonal_vjp(logits)

    return Layer(spec)


def fully_masked_rows_nan_gradient(spec):
    """An additive −inf mask, with the NaN rows it makes zeroed after the softmax: NaN gradients."""

    class Layer(Attention):
        def masked(self, logits, mask, visible):
            if mask is not None:
                visible = visible & mask
            return logits + jnp.where(visible, 0.0, -jnp.inf)

        def softmax(self, logits):
            probs = jax.nn.softmax(logits, axis=-1)
            return jnp.where(jnp.isnan(probs), 0.0, probs)

    return Layer(spec)


# --- Precision ------------------------------------------------------------------------------

def softmax_sum_in_float16(spec):
    """The softmax denominator accumulated in float16 "to match the kernel", whatever the dtype."""

    class Layer(Attention):
        def softmax(self, logits):
            row_max = jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
            row_max = jnp.where(jnp.isfinite(row_max), row_max, 0)
            e = jnp.exp(logits - row_max)
            total = e.astype(jnp.float16).sum(axis=-1, keepdims=True).astype(e.dtype)
            return e / jnp.where(total > 0, total, 1)

    return Layer(spec)
