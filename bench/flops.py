"""The FLOP count behind every throughput and %-of-peak figure.

One multiply-add is 2 FLOPs. For batch B, query length L_q, key length L_k and a spec
with sizes E, E_k, E_v, H, H_kv, d_k, d_v, E_o (SPEC section 1), the forward pass costs

    projections   2·B·(L_q·E·H·d_k + L_k·E_k·H_kv·d_k + L_k·E_v·H_kv·d_v + L_q·H·d_v·E_o)
    Q·K^T         2·B·H·L_q·L_k·d_k
    P·V           2·B·H·L_q·L_k·d_v

and causal attention halves the two attention terms (the FlashAttention convention: a
causal square has L(L+1)/2 visible pairs, half of L² to within 1/L). Softmax, scaling,
masking and bias additions are left out (O(B·H·L_q·L_k), not a matmul). The backward
pass counts as 2× the forward (each matmul has two input gradients), so forward +
backward = 3× forward. Kernels that recompute the forward in the backward (FlashAttention)
do more work than this formula credits them with: the formula measures useful work.

An attention core timed alone (``attnsuite.impls.kernels``: heads already projected) is credited
with the two attention terms only (``core=True``).
"""

from __future__ import annotations

from attnsuite.impls.spec import AttentionSpec

FORMULA_VERSION = "v1: 2*MACs, projections + QK^T + PV, causal attention /2, backward = 2x forward"
PASSES = ("forward", "forward_backward")


def forward_flops(spec: AttentionSpec, batch: int, L_q: int, L_k: int, core: bool = False) -> int:
    s = spec
    projections = 2 * batch * (L_q * s.E * s.H * s.d_k + L_k * s.E_k * s.H_kv * s.d_k
                               + L_k * s.E_v * s.H_kv * s.d_v + L_q * s.H * s.d_v * s.E_o)
    attention = 2 * batch * s.H * L_q * L_k * (s.d_k + s.d_v)
    if s.causal is not None:
        attention //= 2
    return attention if core else projections + attention


def attention_flops(spec: AttentionSpec, batch: int, L_q: int, L_k: int, pass_: str,
                    core: bool = False) -> int:
    """FLOPs of ``pass_`` ("forward" or "forward_backward"); of the core alone if ``core``."""
    if pass_ not in PASSES:
        raise ValueError(f"pass_: expected one of {PASSES}, got {pass_!r}")
    factor = 1 if pass_ == "forward" else 3
    return factor * forward_flops(spec, batch, L_q, L_k, core)
