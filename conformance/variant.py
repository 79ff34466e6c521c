"""The oracle's computation split into named steps, so that a bug hypothesis
(``conformance/hypotheses.py``) can make one mistake in one step.

``Steps`` is float64 NumPy with no precision modes and no input checks: it serves the
diagnosis only. The oracle (``impls/oracle.py``) stays the one trusted reference, and
``tests/test_diagnosis.py`` holds ``Steps`` to it: with no step overridden, its output
and gradients are the oracle's.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from attnsuite.impls.oracle import rope_angles, rope_positions, rotate, structural_mask
from attnsuite.impls.spec import AttentionSpec


@dataclasses.dataclass
class Trace:
    """A forward pass: the output, what the backward needs, and which rows saw a key."""
    out: np.ndarray            # (B, L_q, E_o)
    rows_with_keys: np.ndarray  # (B, L_q) bool: every head of the row saw some key
    q: np.ndarray              # (B, H, L_q, d_k), rotated where the spec has RoPE
    k: np.ndarray              # (B, H, L_k, d_k), likewise, and expanded to H heads
    v: np.ndarray              # (B, H, L_k, d_v), likewise
    tanh: np.ndarray | None    # tanh(S / c) where softcapped
    probs: np.ndarray          # (B, H, L_q, L_k)
    heads: np.ndarray          # (B, L_q, H*d_v)


class Steps:
    """SPEC section 3, one method per step a mistake can hide in."""

    def __init__(self, spec: AttentionSpec):
        self.spec = spec

    # --- forward ------------------------------------------------------------------------
    def forward(self, weights, query, key, value, mask=None, bias=None) -> Trace:
        s = self.spec
        q = self.split_heads(self.project(query, weights, "q"), s.H)
        k = self.split_heads(self.project(key, weights, "k"), s.H_kv)
        if s.rope is not None:
            q_positions, k_positions = self.positions(query.shape[1], key.shape[1])
            q, k = self.rotate(q, self.angles(q_positions)), self.rotate(k, self.angles(k_positions))
        k = self.expand_kv(k)
        v = self.expand_kv(self.split_heads(self.project(value, weights, "v"), s.H_kv))
        visible = self.visible(query.shape[0], query.shape[1], key.shape[1], mask)
        logits, tanh = self.logits(q, k, bias, visible)
        probs = self.softmax(logits, visible)
        heads = self.merge_heads(self.combine(probs, v))
        out = self.project(heads, weights, "o")
        rows = visible.any(axis=-1).all(axis=1)                        # (B, L_q)
        return Trace(out, rows, q, k, v, tanh, probs, heads)

    def project(self, x, weights, name):
        y = x @ weights["w" + name]
        return y + weights["b" + name] if self.spec.bias else y

    def split_heads(self, x, heads):
        B, L, width = x.shape
        return x.reshape(B, L, heads, width // heads).transpose(0, 2, 1, 3)   # (B, heads, L, d)

    def merge_heads(self, x):
        B, H, L, d = x.shape
        return x.transpose(0, 2, 1, 3).reshape(B, L, H * d)                  # (B, L, H*d)

    def expand_kv(self, x):
        return np.repeat(x, self.spec.group_size, axis=1)                    # (B, H, L, d)

    def positions(self, L_q, L_k):
        """RoPE positions of the queries and keys (oracle.rope_positions: end-aligned)."""
        return rope_positions(L_q, L_k)

    def angles(self, positions):
        return rope_angles(self.spec, positions)                         # (L, rotary_dim/2)

    def rotate(self, x, angles, inverse=False):
        """x (B, heads, L, d) rotated per position; ``inverse``: the backward's rotation."""
        return rotate(self.spec, x, angles, inverse)

    def visible(self, B, L_q, L_k, mask):
        """(B, H, L_q, L_k) bool: the structural rules and the user mask."""
        visible = structural_mask(self.spec, L_q, L_k)
        if mask is not None:
            visible = visible & mask
        return np.broadcast_to(visible, (B, self.spec.H, L_q, L_k))

    def scores(self, q, k):
        return (q @ k.transpose(0, 1, 3, 2)) * self.spec.logit_scale       # (B, H, L_q, L_k)

    def softcap(self, s):
        """(capped scores, tanh(s / c) or None)."""
        c = self.spec.softcap
        if c is None:
            return s, None
        t = np.tanh(s / c)
        return c * t, t

    def logits(self, q, k, bias, visible):
        """The scores the softmax reads (masking is the softmax's), and the softcap's tanh."""
        logits, tanh = self.softcap(self.scores(q, k))
        return (logits if bias is None else logits + bias), tanh

    def softmax(self, logits, visible):
        """Over the visible keys of each row; a row with none is zeros."""
        e = np.where(visible, logits, -np.inf)
        row_max = e.max(axis=-1, keepdims=True)
        row_max[~np.isfinite(row_max)] = 0.0
        e = np.exp(e - row_max)
        total = e.sum(axis=-1, keepdims=True)
        return e / np.where(total > 0, total, 1.0)

    def combine(self, probs, v):
        return probs @ v                                                   # (B, H, L_q, d_v)

    # --- backward (the oracle's hand-derived vjp, with the steps a mistake can hide in) ---
    def vjp(self, weights, query, key, value, d_out, mask=None, bias=None) -> tuple[Trace, dict]:
        s, fwd = self.spec, self.forward(weights, query, key, value, mask, bias)
        grads = {"wo": fwd.heads.reshape(-1, fwd.heads.shape[-1]).T @ d_out.reshape(-1, s.E_o)}
        if s.bias:
            grads["bo"] = d_out.sum(axis=(0, 1))
        d_heads = self.split_heads(d_out @ weights["wo"].T, s.H)
        d_probs = d_heads @ fwd.v.transpose(0, 1, 3, 2)
        d_v = fwd.probs.transpose(0, 1, 3, 2) @ d_heads
        d_logits = self.softmax_backward(d_probs, fwd.probs)
        if fwd.tanh is not None:
            d_logits = self.softcap_backward(d_logits, fwd.tanh)
        d_q = self.scale_backward() * (d_logits @ fwd.k)
        d_k = self.scale_backward() * (d_logits.transpose(0, 1, 3, 2) @ fwd.q)
        if s.rope is not None:
            q_positions, k_positions = self.positions(query.shape[1], key.shape[1])
            d_q = self.rotate(d_q, self.angles(q_positions), inverse=True)
            d_k = self.rotate(d_k, self.angles(k_positions), inverse=True)
        G = s.group_size

        def summed(x):                                                     # (B, H_kv, L, d)
            B, H, L, d = x.shape
            return x.reshape(B, H // G, G, L, d).sum(axis=2)

        projected = {"q": (query, self.merge_heads(d_q), "query"),
                     "k": (key, self.merge_heads(summed(d_k)), "key"),
                     "v": (value, self.merge_heads(summed(d_v)), "value")}
        for name, (x, d_y, input_name) in projected.items():
            grads["w" + name] = x.reshape(-1, x.shape[-1]).T @ d_y.reshape(-1, d_y.shape[-1])
            if s.bias:
                grads["b" + name] = d_y.sum(axis=(0, 1))
            grads[input_name] = d_y @ weights["w" + name].T
        return fwd, grads

    def softmax_backward(self, d_probs, probs):
        return probs * (d_probs - np.einsum("...j,...j->...", d_probs, probs)[..., None])

    def softcap_backward(self, d_logits, tanh):
        return d_logits * (1.0 - tanh ** 2)

    def scale_backward(self):
        return self.spec.logit_scale
