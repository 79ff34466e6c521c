"""Our PyTorch implementation of the attention spec (SPEC section 3), following the contract
in ``attnsuite.impls.ours``. Heads are (B, heads, L, d).

- ``explicit``: the math written out (logits, softcap, bias, masked softmax, dropout,
  weighted sum), in the style of nanoGPT's CausalSelfAttention;
- ``fused``: ``torch.nn.functional.scaled_dot_product_attention``, falling back to the
  explicit core for the one feature SDPA cannot express (softcap).

``MultiHeadAttention`` is the same computation as an ``nn.Module`` for use in a model.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attnsuite.impls.convert import torch as convert
from attnsuite.impls.ops.torch import (causal_lower_right, check_mask_and_bias, output, project,
                                       rope_qk, seeded, visibility)
from attnsuite.impls.oracle import structural_rows_with_keys
from attnsuite.impls.spec import AttentionSpec

__all__ = ["project", "visibility", "masked_softmax", "dropout", "explicit_attention",
           "fused_attention", "project_qkv", "attention_fn", "decoding", "explicit", "fused",
           "kernel", "MultiHeadAttention"]


def masked_softmax(logits: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the visible keys of each row; a row with no visible key is all zeros.

    Such a row would be the softmax of all -inf: NaN, and NaN gradients too, even where
    the row is zeroed afterwards (0 * NaN). So it gets finite logits first, then zeros.
    """
    if visible is None:
        return logits.softmax(dim=-1)
    has_key = visible.any(dim=-1, keepdim=True)                          # (B|1, H|1, L_q, 1)
    logits = logits.masked_fill(~visible, float("-inf")).masked_fill(~has_key, 0.0)
    return logits.softmax(dim=-1) * has_key


def dropout(probs: torch.Tensor, rate: float, seed: int | None) -> torch.Tensor:
    """Zero each weight with probability ``rate``, scale the rest by 1 / (1 - rate);
    ``seed=None`` draws from the global RNG."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=probs.device).manual_seed(seed)
    keep = torch.rand(probs.shape, generator=generator, device=probs.device) >= rate
    return probs.masked_fill(~keep, 0.0) / (1.0 - rate)


def explicit_attention(spec: AttentionSpec, q, k, v, mask=None, bias=None, dropout_rate=0.0,
                       seed=None) -> torch.Tensor:
    """(B, H, L_q, d_k), (B, H_kv, L_k, d_k), (B, H_kv, L_k, d_v) -> (B, H, L_q, d_v)."""
    # Query head h reads key/value head h // group_size.
    k = k.repeat_interleave(spec.group_size, dim=1)                      # (B, H, L_k, d_k)
    v = v.repeat_interleave(spec.group_size, dim=1)                      # (B, H, L_k, d_v)
    att = (q @ k.transpose(-2, -1)) * spec.logit_scale                   # (B, H, L_q, L_k)
    if spec.softcap is not None:
        att = spec.softcap * torch.tanh(att / spec.softcap)
    if bias is not None:
        att = att + bias
    att = masked_softmax(att, visibility(spec, q.shape[-2], k.shape[-2], mask, q.device))
    if dropout_rate:
        att = dropout(att, dropout_rate, seed)
    return att @ v                                                        # (B, H, L_q, d_v)


def _sdpa_masking(spec: AttentionSpec, L_q: int, L_k: int, mask, bias, device):
    """(attn_mask, is_causal, has_key) for scaled_dot_product_attention.

    SDPA's own causal options serve where the causal rule is the only mask. ``has_key``
    (bool, broadcastable to (B, H, L_q, 1)) marks the rows that see a key; it is None
    when no row can be empty, and then nothing is spent on finding them.
    """
    if mask is None and bias is None and spec.window is None:
        if spec.causal is None:
            return None, False, None
        if spec.causal == "top_left" or L_q == L_k:  # with L_q == L_k the corners agree
            return None, True, None
        if L_q < L_k:  # bottom-right with L_q > L_k leaves the first rows empty
            return causal_lower_right(L_q, L_k), False, None
    visible = visibility(spec, L_q, L_k, mask, device)
    if visible is None:  # a bias alone
        return bias, False, None
    if mask is None and structural_rows_with_keys(spec, L_q, L_k).all():
        has_key = None  # the rules leave every row a key: no row to fix
    else:
        # A row with no visible key may see every key (no NaN anywhere); its output is zeroed.
        has_key = visible.any(dim=-1, keepdim=True)                      # (B|1, H|1, L_q, 1)
        visible = visible | ~has_key
    attn_mask = visible if bias is None else torch.where(visible, bias, float("-inf"))
    return attn_mask, False, has_key


def fused_attention(spec: AttentionSpec, q, k, v, mask=None, bias=None, dropout_rate=0.0,
                    seed=None) -> torch.Tensor:
    """What ``explicit_attention`` computes, on scaled_dot_product_attention."""
    if spec.softcap is not None:  # SDPA has no hook between the logits and the softmax
        return explicit_attention(spec, q, k, v, mask, bias, dropout_rate, seed)
    attn_mask, is_causal, has_key = _sdpa_masking(spec, q.shape[-2], k.shape[-2], mask, bias,
                                                  q.device)
    with seeded(seed if dropout_rate else None, q.device):
        out = F.scaled_dot_product_attention(                            # (B, H, L_q, d_v)
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_rate, is_causal=is_causal,
            scale=spec.logit_scale, enable_gqa=spec.H_kv != spec.H)
    return out if has_key is None else out * has_key


def project_qkv(spec: AttentionSpec, params, query, key, value, start: int = 0):
    """Q (B, H, L_q, d_k), K (B, H_kv, L_k, d_k), V (B, H_kv, L_k, d_v): projected, Q and K
    rotated at their positions (``start`` tokens before these: a decoding step's cache)."""
    q, k = rope_qk(spec, project(spec, params, query, "q"), project(spec, params, key, "k"), start)
    return q, k, project(spec, params, value, "v")


def attention_fn(spec: AttentionSpec, core):
    """The SPEC 5 ``fn`` around an attention core (``explicit_attention`` or
    ``fused_attention``), with ``fn.init_cache`` and ``fn.decode`` on the same core."""
    def fn(params, query, key, value, mask=None, bias=None, training=False, seed=None):
        check_mask_and_bias(mask, bias)
        q, k, v = project_qkv(spec, params, query, key, value)
        out = core(spec, q, k, v, mask, bias, spec.dropout if training else 0.0, seed)
        return output(spec, params, out)                                 # (B, L_q, E_o)
    fn.init_cache, fn.decode = decoding(spec, core)
    return fn


def decoding(spec: AttentionSpec, core):
    """(init_cache, decode) of the decoding protocol (``attnsuite.conformance.decode``).
    The cache is {"key", "value"}: the projected (and rotated) keys and values so far,
    (B, H_kv, L, d); each step returns a new one, the graph kept, so gradients reach
    every step's inputs through it. New queries are the last of the keys so far: the
    causal rule is bottom-right, and the window counts from there."""
    step_spec = spec.replace(causal="bottom_right") if spec.causal else spec

    def init_cache(params, batch_size: int) -> dict:
        empty = params["wk"].new_zeros
        return {"key": empty(batch_size, spec.H_kv, 0, spec.d_k),
                "value": empty(batch_size, spec.H_kv, 0, spec.d_v)}

    def decode(params, cache, query, key, value):
        q, k, v = project_qkv(spec, params, query, key, value, start=cache["key"].shape[-2])
        cache = {"key": torch.cat([cache["key"], k], dim=-2),
                 "value": torch.cat([cache["value"], v], dim=-2)}
        out = core(step_spec, q, cache["key"], cache["value"])           # (B, H, L_new, d_v)
        return output(spec, params, out), cache

    return init_cache, decode


def explicit(spec: AttentionSpec):
    return attention_fn(spec, explicit_attention)


def fused(spec: AttentionSpec):
    return attention_fn(spec, fused_attention)


def kernel(spec: AttentionSpec):
    """``fused_attention`` alone, for the kernel benchmark (``attnsuite.impls.kernels``)."""
    def fn(params, q, k, v):
        return fused_attention(spec, q, k, v)
    fn.layout = "BHLD"
    return fn


class MultiHeadAttention(nn.Module):
    """The spec as a layer: one ``nn.Linear`` per projection (torch's (out, in) weights),
    the same ``fn`` as ``explicit``/``fused`` on a canonical view of them.

    ``forward(query, key=None, value=None, mask=None, bias=None, seed=None)``: key and
    value default to query (self-attention); dropout follows ``self.training``.
    """

    def __init__(self, spec: AttentionSpec, fused: bool = True, device=None, dtype=None):
        super().__init__()
        self.spec = spec
        factory = {"device": device, "dtype": dtype}
        s = spec
        self.q_proj = nn.Linear(s.E, s.H * s.d_k, bias=s.bias, **factory)
        self.k_proj = nn.Linear(s.E_k, s.H_kv * s.d_k, bias=s.bias, **factory)
        self.v_proj = nn.Linear(s.E_v, s.H_kv * s.d_v, bias=s.bias, **factory)
        self.out_proj = nn.Linear(s.H * s.d_v, s.E_o, bias=s.bias, **factory)
        self._fn = attention_fn(spec, fused_attention if fused else explicit_attention)

    def forward(self, query, key=None, value=None, mask=None, bias=None, seed=None):
        key = query if key is None else key
        value = key if value is None else value
        params = convert.module_to_canonical(dict(self.named_parameters()))
        return self._fn(params, query, key, value, mask, bias, training=self.training, seed=seed)

    @classmethod
    def from_canonical(cls, spec: AttentionSpec, weights: dict, fused: bool = True,
                       device=None) -> "MultiHeadAttention":
        """A layer holding ``weights`` (canonical NumPy arrays or tensors), in their dtype."""
        state = convert.canonical_to_module(weights)
        dtype = next(iter(state.values())).dtype
        module = cls(spec, fused=fused, device=device, dtype=dtype)
        module.load_state_dict(state)
        return module

    def to_canonical(self) -> dict[str, np.ndarray]:
        """The layer's weights in the canonical layout, as NumPy arrays."""
        return convert.to_numpy(convert.module_to_canonical(self.state_dict()))

