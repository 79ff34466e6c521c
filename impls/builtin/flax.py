"""flax's attention layers behind the suite's contract, with their own semantics.

Each factory builds the layer from the spec and converts the canonical params to the
layer's tree inside ``fn`` (``attnsuite.impls.convert.flax``), so ``jax.vjp`` reaches the canonical
params through the conversion. Every feature goes through the layer's own option: the
mask argument (True = attend), causal masking as flax offers it, ``deterministic`` and
its dropout. What the layer has no option for raises ``Unsupported``; what it does
with a fully masked row is left for the suite to see.

For a causal spec both layers also decode (``fn.init_cache``/``fn.decode``, SPEC 5) in
their own ``decode=True`` mode: one token per call into their fixed-length cache
(``cached_key``, ``cached_value``, ``cache_index``), which masks the slots not yet written.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from attnsuite.impls.builtin import scale_is_default
from attnsuite.impls.calling import call_inputs
from attnsuite.impls.convert.flax import to_linen, to_nnx
from attnsuite.impls.errors import Unsupported, decline
from attnsuite.impls.spec import AttentionSpec


def _require_common(spec: AttentionSpec, layer: str) -> None:
    """What neither flax layer can express."""
    reasons = [
        (spec.d_v != spec.d_k, "one head size for query, key and value (value_head_dim)"),
        (not scale_is_default(spec),
         "no scale option: logits are always scaled by 1/sqrt(head_dim)"),
        (spec.softcap is not None, "no logit softcap"),
        (spec.window is not None, "no sliding-window option"),
        (spec.causal == "bottom_right", "no bottom-right causal alignment"),
        (spec.rope is not None, "no rotary positions option (the projections are inside the layer)"),
    ]
    decline(layer, reasons)


def _no_bias(layer: str, bias) -> None:
    if bias is not None:
        raise Unsupported(f"{layer}: the layer takes no additive attention bias")


def _as_4d(mask):
    """The layers document masks as (batch, heads, L_q, L_k)."""
    return mask if mask is None or mask.ndim == 4 else mask[None, None]


# flax's cache has the length it is made with; ours starts at this many tokens and doubles
# whenever a sequence outgrows it.
DECODE_CAPACITY = 64


def _empty_cache(batch: int, heads: int, depth: int) -> dict:
    """The layer's cache variables, and how many tokens they hold as a Python int: the
    growth below then needs no concrete array, so a whole decode can be traced."""
    zeros = jnp.zeros((batch, DECODE_CAPACITY, heads, depth))
    layer = {"cached_key": zeros, "cached_value": zeros, "cache_index": jnp.array(0, jnp.int32)}
    return {"layer": layer, "tokens": 0}


def _ready(layer: dict, tokens: int, dtype) -> dict:
    """The layer's cache variables in ``dtype`` with room for ``tokens`` in all."""
    capacity = layer["cached_key"].shape[1]
    grow = max(capacity, tokens) * 2 - capacity if tokens > capacity else 0
    slots = [(0, 0), (0, grow), (0, 0), (0, 0)]
    return {"cached_key": jnp.pad(layer["cached_key"].astype(dtype), slots),
            "cached_value": jnp.pad(layer["cached_value"].astype(dtype), slots),
            "cache_index": layer["cache_index"]}


def _decode_token_by_token(step, cache: dict, query, key, value):
    """Feed the new tokens one at a time (flax's decode takes one per call):
    ``step(layer_cache, q, k, v) -> (out, layer_cache)`` for each; the outputs joined."""
    tokens = cache["tokens"] + query.shape[1]
    layer = _ready(cache["layer"], tokens, query.dtype)
    outputs = []
    for t in range(query.shape[1]):
        out, layer = step(layer, query[:, t:t + 1], key[:, t:t + 1], value[:, t:t + 1])
        outputs.append(out)
    return jnp.concatenate(outputs, axis=1), {"layer": layer, "tokens": tokens}


# Declared, so that the gate declines bias cases up front (calling.call_inputs); fn still
# raises Unsupported for them (_no_bias), for a caller that does not read the declaration.
@call_inputs(bias=False)
def linen_mha(spec: AttentionSpec):
    name = "flax.linen.MultiHeadDotProductAttention"
    _require_common(spec, name)
    if spec.H_kv != spec.H:
        raise Unsupported(f"{name}: no grouped-query or multi-query attention (num_kv_heads)")
    layer = nn.MultiHeadDotProductAttention(
        num_heads=spec.H, qkv_features=spec.H * spec.d_k, out_features=spec.E_o,
        use_bias=spec.bias, dropout_rate=spec.dropout)

    def fn(params, query, key, value, mask=None, bias=None, training=False, seed=None):
        _no_bias(name, bias)
        mask = _as_4d(mask)
        if spec.causal == "top_left":  # linen's causal masking is a mask flax builds for you
            positions = (jnp.arange(query.shape[1]), jnp.arange(key.shape[1]))
            causal = nn.make_attention_mask(*positions, jnp.greater_equal, extra_batch_dims=1,
                                            dtype=jnp.bool_)
            mask = nn.combine_masks(mask, causal, dtype=jnp.bool_)
        rngs = {"dropout": jax.random.key(seed)} if training and spec.dropout > 0 else {}
        return layer.apply({"params": to_linen(spec, params)}, query, key, value, mask=mask,
                           deterministic=not training, rngs=rngs)

    if spec.causal is not None:
        decoder = layer.clone(decode=True)

        @jax.jit   # one compilation per shape, not one dispatch per op and token
        def step(linen_params, cache, q, k, v):
            out, mutated = decoder.apply({"params": linen_params, "cache": cache}, q, k, v,
                                         deterministic=True, mutable=["cache"])
            return out, dict(mutated["cache"])

        def decode(params, cache, query, key, value):
            linen_params = to_linen(spec, params)
            return _decode_token_by_token(lambda *a: step(linen_params, *a), cache, query, key, value)

        fn.init_cache = lambda params, batch_size: _empty_cache(batch_size, spec.H, spec.d_k)
        fn.decode = decode
    return fn


@call_inputs(bias=False)
def nnx_mha(spec: AttentionSpec):
    name = "flax.nnx.MultiHeadAttention"
    _require_common(spec, name)
    if spec.E_k != spec.E_v:
        raise Unsupported(f"{name}: key and value share one input size (in_kv_features)")
    # Only the layer's structure is needed (fn brings the params): eval_shape skips
    # drawing initial weights. Dropout draws from the rngs passed at each call.
    layer = nnx.eval_shape(lambda: nnx.MultiHeadAttention(
        num_heads=spec.H, in_features=spec.E, qkv_features=spec.H * spec.d_k,
        out_features=spec.E_o, num_kv_heads=spec.H_kv, in_kv_features=spec.E_k,
        use_bias=spec.bias, dropout_rate=spec.dropout, decode=False, rngs=nnx.Rngs(0),
        keep_rngs=False))
    graphdef, param_state, other_state = nnx.split(layer, nnx.Param, ...)

    def fn(params, query, key, value, mask=None, bias=None, training=False, seed=None):
        _no_bias(name, bias)
        module = nnx.merge(graphdef, to_nnx(spec, params, param_state), other_state)
        rngs = nnx.Rngs(dropout=seed) if training and spec.dropout > 0 else None
        return module(query, key, value, mask=_as_4d(mask), deterministic=not training,
                      is_causal=spec.causal == "top_left", rngs=rngs)

    fn.layer = layer  # its variables are what the benchmark counts (shapes, no values)
    if spec.causal is not None:
        @jax.jit   # one compilation per shape, not one dispatch per op and token
        def step(nnx_params, cache, q, k, v):
            module = nnx.merge(graphdef, nnx_params, other_state)
            for name, array in cache.items():
                setattr(module, name, nnx.Cache(array))
            out = module(q, k, v, decode=True, deterministic=True)
            return out, {name: getattr(module, name)[...] for name in cache}

        def decode(params, cache, query, key, value):
            nnx_params = to_nnx(spec, params, param_state)
            return _decode_token_by_token(lambda *a: step(nnx_params, *a), cache, query, key, value)

        fn.init_cache = lambda params, batch_size: _empty_cache(batch_size, spec.H_kv, spec.d_k)
        fn.decode = decode
    return fn
