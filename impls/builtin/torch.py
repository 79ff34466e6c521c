"""PyTorch's built-in attention, run behind the suite's contract with its real semantics.

Each feature goes through the layer's own option, mapped the way its documentation tells
a user to; nothing is fixed up (a fully masked row gives whatever the layer gives).
``Unsupported`` is raised only for what the layer cannot express at all.

- ``multihead_attention``: ``torch.nn.MultiheadAttention(batch_first=True)``, called
  with ``need_weights=False`` (the SDPA path its docs recommend, and what
  ``nn.TransformerEncoderLayer`` uses). Its weights are built from the canonical
  ``params`` inside ``fn`` by ``attnsuite.impls.convert.torch`` and applied with
  ``torch.func.functional_call``, so gradients reach ``params``. Masks: its boolean
  ``attn_mask`` is True = NOT allowed, so ours is inverted; a rank-4 mask is given in its
  (B*H, L_q, L_k) form; an additive bias is a float ``attn_mask`` (-inf where masked).
  Causal and window rules are masks too (the layer has no other way), with its
  ``is_causal`` hint where the mask is exactly top-left causal.
- ``sdpa``: the canonical projections (and RoPE, ``ops.torch.rope_qk``) around
  ``F.scaled_dot_product_attention``, called as a user would: ``is_causal`` for
  top-left, ``causal_lower_right`` for bottom-right, a boolean or float ``attn_mask`` for
  everything else, ``enable_gqa``, ``scale``.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from attnsuite.impls.convert import torch as convert
from attnsuite.impls.errors import Unsupported
from attnsuite.impls.ops.torch import (causal_lower_right, output, project, rope_qk, seeded,
                                       visibility)
from attnsuite.impls.spec import AttentionSpec


def _bias_with_mask(bias, visible):
    """One float attn_mask for a bias and a visibility mask (either may be None)."""
    if visible is None:
        return bias
    return torch.where(visible, bias, float("-inf"))


# ---------------------------------------------------------------------------------------
# torch.nn.MultiheadAttention


def _mha_problems(spec: AttentionSpec) -> list[str]:
    problems = convert.mha_layout_problems(spec)
    if abs(spec.logit_scale * spec.d_k ** 0.5 - 1.0) > 1e-12:
        problems.append(f"the logit scale is 1/sqrt(head_dim) only (scale={spec.scale})")
    if spec.softcap is not None:
        problems.append("no softcap")
    if spec.rope is not None:
        problems.append("no rotary positions (the projections are inside the layer)")
    return problems


def _mha_attn_mask(spec: AttentionSpec, query, key, mask, bias):
    """(attn_mask, is_causal) in nn.MultiheadAttention's terms."""
    B, L_q, L_k = query.shape[0], query.shape[1], key.shape[1]
    visible = visibility(spec, L_q, L_k, mask, query.device)
    if bias is not None:
        attn_mask = _bias_with_mask(bias, visible)
    elif visible is not None:
        attn_mask = ~visible  # its boolean mask is True = NOT allowed
    else:
        return None, False
    # It takes exactly (L_q, L_k), or (B*H, L_q, L_k) for a mask per batch and head.
    if attn_mask.dim() == 4:
        attn_mask = attn_mask.expand(B, spec.H, L_q, L_k).reshape(B * spec.H, L_q, L_k)
    else:
        attn_mask = attn_mask.expand(L_q, L_k)
    exactly_causal = (spec.causal == "top_left" and spec.window is None
                      and mask is None and bias is None)
    return attn_mask, exactly_causal


def multihead_attention(spec: AttentionSpec):
    problems = _mha_problems(spec)
    if problems:
        raise Unsupported("nn.MultiheadAttention: " + "; ".join(problems))
    # Its own parameters are never used (functional_call supplies them): no memory for them.
    layer = nn.MultiheadAttention(spec.E, spec.H, dropout=spec.dropout, bias=spec.bias,
                                  kdim=spec.E_k, vdim=spec.E_v, batch_first=True, device="meta")

    def fn(params, query, key, value, mask=None, bias=None, training=False, seed=None):
        attn_mask, is_causal = _mha_attn_mask(spec, query, key, mask, bias)
        layer.train(training)
        with seeded(seed if training else None, query.device):
            out, _ = functional_call(layer, convert.canonical_to_mha(spec, params),
                                     (query, key, value),
                                     {"attn_mask": attn_mask, "is_causal": is_causal,
                                      "need_weights": False})
        return out

    return fn


# ---------------------------------------------------------------------------------------
# F.scaled_dot_product_attention


def _sdpa_attn_mask(spec: AttentionSpec, L_q: int, L_k: int, mask, bias, device):
    """(attn_mask, is_causal) as a user of scaled_dot_product_attention writes them."""
    if mask is None and bias is None and spec.window is None:
        if spec.causal == "top_left":
            return None, True
        if spec.causal == "bottom_right":
            with warnings.catch_warnings():  # "NaNs when L_q > L_k": the suite reports the rows
                warnings.filterwarnings("ignore", "Lower right causal bias")
                return causal_lower_right(L_q, L_k), False
    visible = visibility(spec, L_q, L_k, mask, device)
    return (visible if bias is None else _bias_with_mask(bias, visible)), False


def sdpa(spec: AttentionSpec):
    if spec.softcap is not None:
        raise Unsupported("scaled_dot_product_attention: no softcap")

    def fn(params, query, key, value, mask=None, bias=None, training=False, seed=None):
        q, k = rope_qk(spec, project(spec, params, query, "q"),         # (B, H, L_q, d_k),
                       project(spec, params, key, "k"))                 # (B, H_kv, L_k, d_k)
        v = project(spec, params, value, "v")                           # (B, H_kv, L_k, d_v)
        attn_mask, is_causal = _sdpa_attn_mask(spec, q.shape[-2], k.shape[-2], mask, bias, q.device)
        dropout_p = spec.dropout if training else 0.0
        with seeded(seed if training else None, q.device):
            heads = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                scale=spec.logit_scale, enable_gqa=spec.H_kv != spec.H)
        return output(spec, params, heads)                              # (B, L_q, E_o)

    return fn
