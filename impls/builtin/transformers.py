"""HF transformers' attention layers, judged through their real ``forward``.

- ``llama_attention_{eager,sdpa}``: ``LlamaAttention`` under each attention implementation
  the library dispatches to on CPU. A self-attention layer: it takes one tensor
  (``forward(hidden_states, position_embeddings, attention_mask)``), so it declares the
  ``self`` call form and the gate moves every case into it. Grouped heads, biases (all four
  or none: ``attention_bias``), dropout (``attention_dropout``, in training mode) are its
  own options; its causal rule is ``is_causal`` (SDPA) or, as HF's models do, the mask the
  caller builds (``attnsuite.impls.masks``), where the window and the user's mask go too,
  with an additive bias folded in. Positions: with the spec's ``rope`` (half style, the
  whole head: Llama's own), the layer's real ``LlamaRotaryEmbedding``; without, cos = 1
  and sin = 0, which makes its rotation the identity.

Weights come from the canonical ``params`` inside ``fn`` (``attnsuite.impls.convert
.transformers``) through ``torch.func.functional_call``, so gradients reach them.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from attnsuite.impls import oracle
from attnsuite.impls.calling import call_forms
from attnsuite.impls.convert.transformers import llama_state_dict
from attnsuite.impls.errors import Unsupported
from attnsuite.impls.spec import AttentionSpec


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise Unsupported(f"transformers is not installed (pip install 'attnsuite[ecosystem]'): {exc}")
    return transformers


def _llama_problems(spec: AttentionSpec) -> list[str]:
    problems = []
    if spec.is_cross or spec.E_o != spec.E:
        problems.append("one hidden size in and out (no kdim, vdim, out_dim)")
    if spec.d_v != spec.d_k:
        problems.append("value heads as large as query heads")
    if spec.scale is not None:
        problems.append("the logit scale is head_dim ** -0.5")
    if spec.softcap is not None:
        problems.append("no softcap")
    if spec.rope is not None and (spec.rope.style != "half" or spec.rotary_dim != spec.d_k):
        problems.append("RoPE in the half style over the whole head only")
    return problems


def _visibility(spec, L_q, L_k, mask, device):
    """(B|1, H|1, L_q, L_k) bool: the causal and window rules with the user's mask."""
    visible = torch.as_tensor(oracle.structural_mask(spec, L_q, L_k), device=device)
    return visible if mask is None else visible & mask


def _position_embeddings(layer_config, spec, x):
    """(cos, sin), each (B, L, d_k): the layer's own rotary embedding, or the identity."""
    B, L = x.shape[0], x.shape[1]
    if spec.rope is None:
        ones = torch.ones(B, L, spec.d_k, dtype=x.dtype, device=x.device)
        return ones, torch.zeros_like(ones)
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    positions = torch.arange(L, device=x.device)[None].expand(B, L)
    return LlamaRotaryEmbedding(layer_config).to(x.device)(x, positions)


def _llama(spec: AttentionSpec, implementation: str):
    transformers = _transformers()
    problems = _llama_problems(spec)
    if problems:
        raise Unsupported("LlamaAttention: " + "; ".join(problems))
    try:
        config = transformers.LlamaConfig(
            hidden_size=spec.E, num_attention_heads=spec.H, num_key_value_heads=spec.H_kv,
            head_dim=spec.d_k, attention_bias=spec.bias, attention_dropout=spec.dropout,
            rope_parameters={"rope_type": "default",
                             "rope_theta": spec.rope.theta if spec.rope else 10000.0})
    except Exception as exc:   # its own validation: a configuration the layer cannot have
        reason = str(exc).strip().splitlines()[-1].strip()
        raise Unsupported(f"LlamaConfig refuses it: {reason}") from exc
    config._attn_implementation = implementation
    with torch.device("meta"):   # functional_call supplies every weight
        layer = transformers.models.llama.modeling_llama.LlamaAttention(config, layer_idx=0)

    def fn(params, query, key, value, mask=None, bias=None, training=False, seed=None):
        L = query.shape[1]
        structured = spec.window is not None or mask is not None or bias is not None
        # SDPA's is_causal is the layer's own causal option; everything else is a mask.
        layer.is_causal = spec.causal is not None and not (structured or implementation == "eager")
        attention_mask = None
        if structured or (spec.causal is not None and not layer.is_causal):
            visible = _visibility(spec, L, L, mask, query.device)
            if implementation == "eager" or bias is not None:
                # HF's own masks for eager attention: the dtype's lowest value where masked.
                zero = torch.zeros((), dtype=query.dtype, device=query.device)
                attention_mask = torch.where(visible, zero, torch.finfo(query.dtype).min)
                if bias is not None:
                    attention_mask = attention_mask + bias
            else:
                attention_mask = visible
        layer.train(training)
        if training:
            torch.manual_seed(seed or 0)
        out, _ = functional_call(layer, llama_state_dict(params),
                                 (query,), {"position_embeddings": _position_embeddings(config, spec, query),
                                            "attention_mask": attention_mask})
        return out

    return fn


@call_forms("self")
def llama_attention_eager(spec: AttentionSpec):
    return _llama(spec, "eager")


@call_forms("self")
def llama_attention_sdpa(spec: AttentionSpec):
    return _llama(spec, "sdpa")
