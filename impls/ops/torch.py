"""PyTorch steps shared by our implementation, the built-in adapters and the kernels
(contract: ``attnsuite.impls.ops``). Heads are (B, heads, L, d)."""

from __future__ import annotations

import contextlib

import torch

from attnsuite.impls import ops
from attnsuite.impls.spec import AttentionSpec


def project(spec: AttentionSpec, params: dict, x: torch.Tensor, letter: str) -> torch.Tensor:
    """(B, L, E) -> (B, heads, L, d): x @ w{letter} + b{letter}, split into heads."""
    y = x @ params["w" + letter]                                  # (B, L, heads*d)
    if spec.bias:
        y = y + params["b" + letter]
    heads = spec.H if letter == "q" else spec.H_kv
    return y.unflatten(-1, (heads, -1)).transpose(1, 2)          # (B, heads, L, d)


def output(spec: AttentionSpec, params: dict, heads: torch.Tensor) -> torch.Tensor:
    """(B, H, L_q, d_v) -> (B, L_q, E_o): heads merged, @ wo + bo."""
    out = heads.transpose(1, 2).flatten(2) @ params["wo"]       # (B, L_q, H*d_v) @ (H*d_v, E_o)
    return out + params["bo"] if spec.bias else out


def structural_visibility(spec: AttentionSpec, L_q: int, L_k: int, device) -> torch.Tensor | None:
    """(L_q, L_k) bool on ``device``, the causal and window rules (True = visible); None
    where there are none. Built with torch ops there: no host copy per call."""
    return ops.structural_rule(spec, lambda n: torch.arange(n, device=device), L_q, L_k)


def visibility(spec: AttentionSpec, L_q: int, L_k: int, mask, device) -> torch.Tensor | None:
    """Bool, broadcastable to (B, H, L_q, L_k): the structural rules and the user's mask."""
    visible = structural_visibility(spec, L_q, L_k, device)
    if mask is None:
        return visible
    return mask if visible is None else visible & mask


def check_mask_and_bias(mask, bias) -> None:
    ops.check_mask_and_bias(mask, bias, lambda dtype: dtype == torch.bool)


def rope(spec: AttentionSpec, x: torch.Tensor, positions) -> torch.Tensor:
    """(B, heads, L, d_k) rotated at ``positions`` (L,) (contract: ``attnsuite.impls.ops``)."""
    if spec.rope is None:
        return x
    tables = ops.rope_tables(spec)
    angles = (torch.as_tensor(positions, device=x.device).to(torch.float64)[:, None]
              * torch.as_tensor(tables.frequency, device=x.device))            # (L, d_k)
    wide = torch.promote_types(x.dtype, torch.float32)
    cos = angles.cos().to(wide)
    sin = (angles.sin() * torch.as_tensor(tables.sign, device=x.device)).to(wide)
    x_wide = x.to(wide)
    partner = torch.as_tensor(tables.partner, device=x.device)
    return (x_wide * cos + x_wide[..., partner] * sin).to(x.dtype)


def rope_qk(spec: AttentionSpec, q: torch.Tensor, k: torch.Tensor, start: int = 0):
    """q (B, H, L_q, d_k) and k (B, H_kv, L_k, d_k) rotated at their positions: key j at
    start + j, query i at start + i + L_k - L_q."""
    if spec.rope is None:
        return q, k
    L_q, L_k = q.shape[-2], k.shape[-2]
    return (rope(spec, q, torch.arange(start + L_k - L_q, start + L_k, device=q.device)),
            rope(spec, k, torch.arange(start, start + L_k, device=k.device)))


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
