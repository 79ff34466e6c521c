"""HF transformers' attention layers behind the suite's contract, through their real
``forward``, under each attention implementation they dispatch to on a CPU.

- ``BertSelfAttention`` with ``BertSelfOutput``'s ``dense`` (no LayerNorm or residual).
- ``LlamaAttention`` (grouped heads), with its own rotary embedding for a half-style RoPE
  (the identity, cos = 1 and sin = 0, for a spec without RoPE); it decodes
  (``fn.init_cache``/``fn.decode``, SPEC 5) with its own cache classes: ``DynamicCache``
  under eager, ``StaticCache`` under sdpa.

Both take ONE input, ``hidden_states``: they declare the ``self`` call form
(``attnsuite.impls.calling``), and the gate moves every case of a profile into it; each form
a layer takes is one entry of its ``forms`` table, so the key-is-value form
(``BertCrossAttention``) joins there. ``LlamaAttention`` takes positions as
``position_embeddings``: for a spec with a half-style RoPE over the whole head, those of its
own ``LlamaRotaryEmbedding``; without RoPE, cos = 1 and sin = 0 (the identity).

The mask is what an HF model hands its layers (``attnsuite.impls.masks.visible_mask``):
additive (0 / ``finfo(dtype).min``) under ``eager``; boolean (True = attend) under
``sdpa``, or none with the layer's own ``is_causal`` when the mask is exactly top-left
causal. An additive bias is added to that float mask, as HF's float masks are added to
the logits. Configs are built in code; the modules live on the meta device and
``torch.func.functional_call`` supplies the converted canonical params
(``attnsuite.impls.convert.transformers``), so gradients reach them.
"""

from __future__ import annotations

from typing import Callable

from attnsuite.impls.builtin import scale_is_default
from attnsuite.impls.builtin.optional import library
from attnsuite.impls.calling import call_forms
from attnsuite.impls.errors import Unsupported, decline
from attnsuite.impls.masks import visible_mask
from attnsuite.impls.spec import AttentionSpec

IMPLEMENTATIONS = ("eager", "sdpa")


FORM_WORDS = {"self": "self-attention (one tensor as query, key and value)",
              "kv": "key-is-value attention (query, and one memory as key and value)",
              "qkv": "three tensors"}


def call_form(query, key, value) -> str:
    """How the suite called ``fn``: one tensor three times, key passed as value, or three."""
    if query is key and key is value:
        return "self"
    return "kv" if key is value else "qkv"


def _attention_mask(spec, implementation, L_q, L_k, mask, bias, like, layer_is_causal):
    """The ``attention_mask`` an HF model passes its layer, for the spec's visibility."""
    import torch

    exactly_causal = (spec.causal == "top_left" and spec.window is None and mask is None
                      and bias is None)
    if implementation == "sdpa" and bias is None:
        if exactly_causal and layer_is_causal:
            return None                      # sdpa_attention_forward sets is_causal itself
        visible = visible_mask(spec, L_q, L_k, mask, rank=4, xp=torch)
        if visible is None and layer_is_causal:  # no mask would make the layer causal
            visible = torch.ones((1, 1, L_q, L_k), dtype=torch.bool, device=like.device)
        return visible
    additive = visible_mask(spec, L_q, L_k, mask, rank=4, additive=torch.finfo(like.dtype).min,
                            dtype=like.dtype, xp=torch)
    if bias is None:
        return additive
    return bias if additive is None else additive + bias


def _factory(name: str, problems: Callable, build: Callable, forms: dict[str, Callable],
             implementation: str, decode_step: Callable | None = None):
    """A factory for a layer: ``build(spec, implementation)`` gives its meta modules,
    ``forms[form](modules, state, query, key, value, attention_mask)`` calls them, and
    ``decode_step(modules, state, cache, hidden_states, attention_mask)``, where given,
    feeds new tokens through the layer with its own cache (SPEC 5, "Decoding")."""
    label = f'{name} (attn_implementation="{implementation}")'

    def factory(spec: AttentionSpec):
        library("transformers", label)  # a missing library is the reason for every spec
        decline(label, problems(spec))
        import torch

        from attnsuite.impls.convert import transformers as convert
        from attnsuite.impls.ops.torch import seeded

        modules, layout, is_causal = build(spec, implementation)

        def fn(params, query, key, value, mask=None, bias=None, training=False, seed=None):
            form = call_form(query, key, value)
            if form not in forms:
                raise Unsupported(f"{label}: takes {' or '.join(FORM_WORDS[f] for f in forms)} "
                                  f"only; this call passes {FORM_WORDS[form]}")
            attention_mask = _attention_mask(spec, implementation, query.shape[1], key.shape[1],
                                             mask, bias, query, is_causal)
            for module in modules.values():
                module.train(training)
            with seeded(seed if training else None, query.device):
                return forms[form](modules, convert.to_state_dict(spec, params, layout),
                                   query, key, value, attention_mask)

        fn.layer = torch.nn.ModuleDict(modules)  # what the benchmark counts: every module used
        if decode_step is not None and spec.causal is not None:
            _declare_decoding(fn, label, spec, implementation, modules, decode_step)
        return fn

    return call_forms(*forms)(factory)


# Each of HF's two cache classes is judged, one under each attention implementation.
CACHE_CLASSES = {"eager": "DynamicCache", "sdpa": "StaticCache"}
STATIC_CACHE_TOKENS = 256   # a StaticCache is allocated once, at this length


def _step_mask(spec, implementation, new: int, past: int, slots: int, like):
    """The mask of a decoding step: the new tokens are the last of the ``past + new`` keys
    seen so far (bottom-right causal, the spec's window), and the cache's ``slots`` beyond
    them (a StaticCache's unwritten ones) hidden; boolean under sdpa, additive under eager."""
    import torch

    visible = torch.zeros((1, 1, new, slots), dtype=torch.bool, device=like.device)
    rule = visible_mask(spec.replace(causal="bottom_right"), new, past + new, None, rank=4, xp=torch)
    visible[..., :past + new] = True if rule is None else rule
    if implementation == "sdpa":
        return visible
    hidden = torch.finfo(like.dtype).min
    return torch.zeros(visible.shape, dtype=like.dtype, device=like.device).masked_fill(~visible, hidden)


def _declare_decoding(fn, label, spec, implementation, modules, decode_step) -> None:
    """``fn.init_cache``/``fn.decode`` on one of the layer's own cache classes
    (``CACHE_CLASSES``), with the mask an HF model builds for each step."""
    import transformers

    from attnsuite.impls.convert import transformers as convert

    cache_class = CACHE_CLASSES[implementation]

    def init_cache(params, batch_size):
        if cache_class == "StaticCache":
            return transformers.StaticCache(config=modules["attn"].config,
                                            max_cache_len=STATIC_CACHE_TOKENS)
        return transformers.DynamicCache()

    def decode(params, cache, query, key, value):
        if call_form(query, key, value) != "self":
            raise Unsupported(f"{label}: decodes self-attention only")
        past, new = int(cache.get_seq_length()), query.shape[1]
        slots = STATIC_CACHE_TOKENS if cache_class == "StaticCache" else past + new
        if past + new > slots:
            raise Unsupported(f"{label}: its StaticCache holds {slots} tokens")
        attention_mask = _step_mask(spec, implementation, new, past, slots, query)
        for module in modules.values():
            module.eval()
        state = convert.to_state_dict(spec, params, convert.LLAMA)
        return decode_step(modules, state, cache, query, attention_mask), cache

    fn.init_cache, fn.decode = init_cache, decode


# ---------------------------------------------------------------------------------------
# BertSelfAttention + BertSelfOutput.dense

BERT = "transformers.BertSelfAttention"


def _bert_problems(spec: AttentionSpec) -> list[tuple[bool, str]]:
    return [
        (spec.H_kv != spec.H, "no grouped-query or multi-query attention"),
        (spec.head_dim is not None or spec.value_head_dim is not None,
         "head size is hidden_size / num_attention_heads"),
        (spec.E_k != spec.E or spec.E_v != spec.E, "key and value have hidden_size features"),
        (spec.E_o != spec.E, "the output dense maps hidden_size to hidden_size"),
        (not spec.bias, "its Linear layers always have biases"),
        (not scale_is_default(spec), "no scale option: 1/sqrt(head size)"),
        (spec.softcap is not None, "no logit softcap"),
        (spec.rope is not None, "no rotary positions (BERT's positions are embeddings outside the layer)"),
    ]


def _config(make, **fields):
    """A transformers config, or Unsupported with its own validation's reason."""
    try:
        return make(**fields)
    except Exception as exc:   # its validation: a configuration the layer cannot have
        reason = str(exc).strip().splitlines()[-1].strip()
        raise Unsupported(f"{make.__name__} refuses it: {reason}") from exc


def _bert_build(spec: AttentionSpec, implementation: str):
    import torch
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertSelfAttention, BertSelfOutput

    from attnsuite.impls.convert.transformers import BERT as layout

    config = _config(BertConfig, hidden_size=spec.E, num_attention_heads=spec.H,
                     attention_probs_dropout_prob=spec.dropout, hidden_dropout_prob=0.0,
                     attn_implementation=implementation)
    is_causal = spec.causal is not None
    with torch.device("meta"):  # functional_call supplies every weight
        modules = {"self": BertSelfAttention(config, is_causal=is_causal),
                   "output": BertSelfOutput(config).dense}
    return modules, layout, is_causal


def _bert_self(modules, state, query, key, value, attention_mask):
    from torch.func import functional_call

    from attnsuite.impls.convert.transformers import submodule

    heads, _ = functional_call(modules["self"], submodule(state, "self"), (query,),
                               {"attention_mask": attention_mask})
    return functional_call(modules["output"], submodule(state, "output.dense"), (heads,))


# ---------------------------------------------------------------------------------------
# LlamaAttention

LLAMA = "transformers.LlamaAttention"


def _llama_problems(spec: AttentionSpec) -> list[tuple[bool, str]]:
    return [
        (spec.d_v != spec.d_k, "one head_dim for query, key and value"),
        (spec.d_k % 2, "head_dim must be even (its config validates RoPE, which rotates pairs)"),
        (spec.E_k != spec.E or spec.E_v != spec.E, "key and value have hidden_size features"),
        (spec.E_o != spec.E, "o_proj maps back to hidden_size"),
        (not scale_is_default(spec), "no scale option: 1/sqrt(head_dim)"),
        (spec.softcap is not None, "no logit softcap"),
        (spec.rope is not None and (spec.rope.style != "half" or spec.rotary_dim != spec.d_k),
         "RoPE in the half style over the whole head only"),
    ]


def _llama_build(spec: AttentionSpec, implementation: str):
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    from attnsuite.impls.convert.transformers import LLAMA as layout

    theta = spec.rope.theta if spec.rope is not None else 10000.0
    config = _config(LlamaConfig, hidden_size=spec.E, num_attention_heads=spec.H,
                     num_key_value_heads=spec.H_kv, head_dim=spec.d_k,
                     attention_bias=spec.bias, attention_dropout=spec.dropout,
                     rope_parameters={"rope_type": "default", "rope_theta": theta},
                     attn_implementation=implementation)
    with torch.device("meta"):
        module = LlamaAttention(config, layer_idx=0)
    modules = {"attn": module}
    if spec.rope is not None:   # its own rotary embedding (no weights: cos and sin of positions)
        modules["rope"] = LlamaRotaryEmbedding(config)
    return modules, layout, module.is_causal


def _llama_position_embeddings(modules, hidden_states, start: int = 0):
    """(cos, sin) for the tokens of ``hidden_states`` at positions start, start + 1, ...:
    those of the layer's own rotary embedding, or the identity (cos = 1, sin = 0)."""
    import torch

    B, L = hidden_states.shape[:2]
    if "rope" in modules:
        positions = torch.arange(start, start + L, device=hidden_states.device)[None].expand(B, L)
        return modules["rope"].to(hidden_states.device)(hidden_states, positions)
    cos = torch.ones((B, L, modules["attn"].head_dim), dtype=hidden_states.dtype,
                     device=hidden_states.device)
    return cos, torch.zeros_like(cos)


def _llama_self(modules, state, query, key, value, attention_mask):
    from torch.func import functional_call

    out, _ = functional_call(modules["attn"], state, (query,),
                             {"position_embeddings": _llama_position_embeddings(modules, query),
                              "attention_mask": attention_mask})
    return out


def _llama_decode_step(modules, state, cache, hidden_states, attention_mask):
    """New tokens through ``LlamaAttention`` with its ``DynamicCache``, which it updates
    with their rotated keys and values: positions continue from the cache's length."""
    from torch.func import functional_call

    positions = _llama_position_embeddings(modules, hidden_states, int(cache.get_seq_length()))
    out, _ = functional_call(modules["attn"], state, (hidden_states,),
                             {"position_embeddings": positions, "attention_mask": attention_mask,
                              "cache": cache})
    return out


# ---------------------------------------------------------------------------------------
# The registered factories: one per layer and attention implementation.

bert_self_attention_eager = _factory(BERT, _bert_problems, _bert_build, {"self": _bert_self}, "eager")
bert_self_attention_sdpa = _factory(BERT, _bert_problems, _bert_build, {"self": _bert_self}, "sdpa")
llama_attention_eager = _factory(LLAMA, _llama_problems, _llama_build, {"self": _llama_self}, "eager",
                                 _llama_decode_step)
llama_attention_sdpa = _factory(LLAMA, _llama_problems, _llama_build, {"self": _llama_self}, "sdpa",
                                _llama_decode_step)
