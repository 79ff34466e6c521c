"""Multi-head attention as a user writes it: an ``nn.Module`` with ``nn.Linear``
projections, and ``make``, the attnsuite plug-in factory that judges it.

    attnsuite check torch:myattention.layer:make
    pytest --attnsuite-impl torch:myattention.layer:make --attnsuite-profile quick
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from attnsuite import Unsupported, visible_mask


class MultiHeadAttention(nn.Module):
    """Grouped-query attention with an optional tanh soft cap; no rotary embeddings."""

    def __init__(self, d_model, heads, kv_heads=None, head_dim=None, value_dim=None, kdim=None,
                 vdim=None, out_dim=None, bias=True, scale=None, softcap=None):
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads or heads
        self.head_dim = head_dim or d_model // heads
        self.value_dim = value_dim or self.head_dim
        self.scale = scale if scale is not None else self.head_dim ** -0.5
        self.softcap = softcap
        self.q_proj = nn.Linear(d_model, heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or d_model, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(vdim or d_model, self.kv_heads * self.value_dim, bias=bias)
        self.out_proj = nn.Linear(heads * self.value_dim, out_dim or d_model, bias=bias)

    def forward(self, query, key, value, mask=None, bias=None):
        """``mask``: boolean, broadcastable to (B, heads, L_q, L_k), True = attend."""
        def heads(x, n):                                      # (B, L, n*d) -> (B, n, L, d)
            return x.unflatten(-1, (n, -1)).transpose(1, 2)

        group = self.heads // self.kv_heads                   # query heads per key/value head
        q = heads(self.q_proj(query), self.heads)                                       # (B, H, L_q, d_k)
        k = heads(self.k_proj(key), self.kv_heads).repeat_interleave(group, dim=1)      # (B, H, L_k, d_k)
        v = heads(self.v_proj(value), self.kv_heads).repeat_interleave(group, dim=1)    # (B, H, L_k, d_v)
        logits = (q @ k.transpose(-2, -1)) * self.scale                                 # (B, H, L_q, L_k)
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        if bias is not None:
            logits = logits + bias
        if mask is not None:
            # A row that sees no key returns zeros, with finite gradients.
            has_key = mask.any(dim=-1, keepdim=True)
            logits = logits.masked_fill(~mask, float("-inf")).masked_fill(~has_key, 0.0)
        weights = logits.softmax(dim=-1)
        if mask is not None:
            weights = weights * has_key
        return self.out_proj((weights @ v).transpose(1, 2).flatten(-2))                 # (B, L_q, E_o)


def make(spec):
    """The attnsuite factory: ``fn(params, query, key, value, mask, bias)`` runs the layer
    on the canonical weights (``x @ W``, so an ``nn.Linear`` takes ``W.T``)."""
    if spec.rope is not None:
        raise Unsupported("MultiHeadAttention: no rotary embeddings")
    layer = MultiHeadAttention(spec.E, spec.H, spec.H_kv, spec.d_k, spec.d_v, spec.E_k, spec.E_v,
                               spec.E_o, spec.bias, spec.logit_scale, spec.softcap)

    def fn(params, query, key, value, mask=None, bias=None):
        weights = {}
        for name, proj in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")):
            weights[f"{proj}.weight"] = params[f"w{name}"].T
            if spec.bias:
                weights[f"{proj}.bias"] = params[f"b{name}"]
        visible = visible_mask(spec, query.shape[1], key.shape[1], mask, rank=4, xp=torch)
        return functional_call(layer, weights, (query, key, value),
                               {"mask": visible, "bias": bias})

    return fn
