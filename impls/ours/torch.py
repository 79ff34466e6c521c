"""Our PyTorch implementation of the attention spec (SPEC section 3).

Two paths share the projections and the masks, and differ only in the attention core:

- ``explicit``: the math written out (logits, softcap, bias, masked softmax, dropout,
  weighted sum), in the style of nanoGPT's CausalSelfAttention;
- ``fused``: ``torch.nn.functional.scaled_dot_product_attention``, falling back to the
  explicit core for the one feature SDPA cannot express (softcap).

Both give a query row with no visible key a zero output and a zero gradient, and both
accept ``training=True`` with a ``seed`` for dropout. ``MultiHeadAttention`` is the same
computation as an ``nn.Module`` for use in a model.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attnsuite.impls.convert import torch as convert
from attnsuite.impls.spec import AttentionSpec

# ---------------------------------------------------------------------------------------
# Pieces shared by both paths (and by the built-in SDPA adapter).


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads*d) -> (B, heads, L, d)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, d) -> (B, L, heads*d)."""
    return x.transpose(1, 2).flatten(2)


def project(params: dict, x: torch.Tensor, letter: str) -> torch.Tensor:
    """x @ w{letter} + b{letter}, the bias only where the spec has one."""
    y = x @ params["w" + letter]
    bias = params.get("b" + letter)
    return y if bias is None else y + bias


def project_heads(spec: AttentionSpec, params: dict, query, key, value):
    """Q (B, H, L_q, d_k), K (B, H_kv, L_k, d_k), V (B, H_kv, L_k, d_v)."""
    return (split_heads(project(params, query, "q"), spec.H),
            split_heads(project(params, key, "k"), spec.H_kv),
            split_heads(project(params, value, "v"), spec.H_kv))


def structural_visibility(spec: AttentionSpec, L_q: int, L_k: int, device) -> torch.Tensor | None:
    """(L_q, L_k) bool, the causal and window rules (True = visible); None if there are none.

    Built with torch ops on ``device`` (no host copy per call); it equals
    ``attnsuite.impls.oracle.structural_mask``, which the tests check.
    """
    if spec.causal is None and spec.window is None:
        return None
    shifted_i = torch.arange(L_q, device=device)[:, None]
    if spec.causal == "bottom_right":
        shifted_i = shifted_i + (L_k - L_q)
    offset = torch.arange(L_k, device=device)[None, :] - shifted_i     # j - i'
    visible = torch.ones(L_q, L_k, dtype=torch.bool, device=device)
    if spec.causal is not None:
        visible = visible & (offset <= 0)
    if spec.window is not None:
        left, right = spec.window
        visible = visible & (offset >= -left) & (offset <= right)
    return visible


def visible_keys(spec: AttentionSpec, L_q: int, L_k: int, mask, device) -> torch.Tensor | None:
    """Bool, broadcastable to (B, H, L_q, L_k): the structural rules and the user's mask."""
    visible = structural_visibility(spec, L_q, L_k, device)
    if mask is None:
        return visible
    return mask if visible is None else visible & mask


def causal_lower_right(L_q: int, L_k: int):
    """torch's bottom-right causal mask object for SDPA. Imported on first use: its module
    imports torch._dynamo, seconds that most runs never need."""
    from torch.nn.attention.bias import causal_lower_right as lower_right

    return lower_right(L_q, L_k)


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device):
    """Run the block on the global RNG seeded with ``seed`` (its state restored after);
    leave the RNG alone when seed is None. SDPA's dropout draws from the global RNG."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------------------------------
# The explicit core.


def masked_softmax(logits: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the visible keys of each row; a row with no visible key is all zeros.

    Such a row would be the softmax of all -inf: NaN, and NaN gradients too, even where
    the row is zeroed afterwards (0 * NaN). So it gets finite logits first, then zeros.
    """
    if visible is None:
        return logits.softmax(dim=-1)
    has_key = visible.any(dim=-1, keepdim=True)
    logits = logits.masked_fill(~visible, float("-inf")).masked_fill(~has_key, 0.0)
    return logits.softmax(dim=-1) * has_key


def drop(probs: torch.Tensor, p: float, seed: int | None) -> torch.Tensor:
    """Zero each weight with probability p, scale the rest by 1 / (1 - p)."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=probs.device).manual_seed(seed)
    keep = torch.rand(probs.shape, generator=generator, device=probs.device) >= p
    return probs.masked_fill(~keep, 0.0) / (1.0 - p)


def explicit_attention(spec: AttentionSpec, q, k, v, mask=None, bias=None, dropout_p=0.0,
                       seed=None) -> torch.Tensor:
    """Per-head outputs (B, H, L_q, d_v) from Q, K, V as ``project_heads`` gives them."""
    k = k.repeat_interleave(spec.group_size, dim=1)   # query head h reads kv head h // group
    v = v.repeat_interleave(spec.group_size, dim=1)
    att = (q @ k.transpose(-2, -1)) * spec.logit_scale
    if spec.softcap is not None:
        att = spec.softcap * torch.tanh(att / spec.softcap)
    if bias is not None:
        att = att + bias
    att = masked_softmax(att, visible_keys(spec, q.shape[-2], k.shape[-2], mask, q.device))
    if dropout_p:
        att = drop(att, dropout_p, seed)
    return att @ v


# ---------------------------------------------------------------------------------------
# The fused core.


def sdpa_masking(spec: AttentionSpec, L_q: int, L_k: int, mask, bias, device):
    """(attn_mask, is_causal, has_key) for scaled_dot_product_attention.

    SDPA's own causal options serve where the causal rule is the only mask. ``has_key``
    (bool, broadcastable to (B, H, L_q, 1)) marks the rows that see a key; it is None
    when no row can be empty.
    """
    if mask is None and bias is None and spec.window is None:
        if spec.causal is None:
            return None, False, None
        if spec.causal == "top_left":
            return None, True, None
        if L_q <= L_k:  # bottom-right with L_q > L_k leaves the first rows empty
            return causal_lower_right(L_q, L_k), False, None
    visible = visible_keys(spec, L_q, L_k, mask, device)
    if visible is None:  # a bias alone
        return bias, False, None
    # A row with no visible key may see every key (no NaN anywhere); its output is zeroed.
    has_key = visible.any(dim=-1, keepdim=True)
    visible = visible | ~has_key
    attn_mask = visible if bias is None else torch.where(visible, bias, float("-inf"))
    return attn_mask, False, has_key


def fused_attention(spec: AttentionSpec, q, k, v, mask=None, bias=None, dropout_p=0.0,
                    seed=None) -> torch.Tensor:
    """What ``explicit_attention`` computes, on scaled_dot_product_attention."""
    L_q, L_k = q.shape[-2], k.shape[-2]
    if spec.softcap is not None:  # SDPA has no hook between the logits and the softmax
        return explicit_attention(spec, q, k, v, mask, bias, dropout_p, seed)
    attn_mask, is_causal, has_key = sdpa_masking(spec, L_q, L_k, mask, bias, q.device)
    with seeded(seed if dropout_p else None, q.device):
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
            scale=spec.logit_scale, enable_gqa=spec.H_kv != spec.H)
    return out if has_key is None else out * has_key


# ---------------------------------------------------------------------------------------
# The factories (SPEC section 5) and the Module.


def _check_rank(name: str, t) -> None:
    if t is not None and t.dim() not in (2, 4):
        raise ValueError(f"{name}: must have rank 2 (L_q, L_k) or rank 4 (B, H, L_q, L_k), got "
                         f"shape {tuple(t.shape)}; rank 3 is ambiguous when B == H")


def attention_fn(spec: AttentionSpec, attention):
    """The SPEC 5 ``fn`` around an attention core (``explicit_attention`` or ``fused_attention``)."""
    def fn(params, query, key, value, mask=None, bias=None, training=False, seed=None):
        _check_rank("mask", mask)
        _check_rank("bias", bias)
        if mask is not None and mask.dtype != torch.bool:
            raise ValueError(f"mask: must be boolean (True = may attend), got dtype {mask.dtype}")
        q, k, v = project_heads(spec, params, query, key, value)
        heads = attention(spec, q, k, v, mask, bias, spec.dropout if training else 0.0, seed)
        return project(params, merge_heads(heads), "o")
    return fn


def explicit(spec: AttentionSpec):
    return attention_fn(spec, explicit_attention)


def fused(spec: AttentionSpec):
    return attention_fn(spec, fused_attention)


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
