"""``equinox.nn.MultiheadAttention`` behind the suite's contract, with its own semantics.

The layer works on one example, ``(L, features)``: ``fn`` vmaps it over the batch, as a
user does. It has no causal or window option: its mask (per example ``(L_q, L_k)``, or
``(H, L_q, L_k)`` per head) carries them, built by ``attnsuite.impls.masks.visible_mask``.
Head sizes, input and output sizes, biases and dropout on the attention weights are its
own options; the canonical params become its ``Linear`` weights inside ``fn``
(``attnsuite.impls.convert.equinox``), so gradients reach them through the conversion.

RoPE composes as equinox's documentation shows: ``eqx.nn.RotaryPositionalEmbedding``
(half style, the whole head) applied to the query and key heads in ``process_heads``.
It rotates every sequence from position 0, queries included.
"""

from __future__ import annotations

from attnsuite.impls.builtin import scale_is_default
from attnsuite.impls.builtin.optional import library
from attnsuite.impls.calling import call_inputs
from attnsuite.impls.errors import Unsupported, decline
from attnsuite.impls.masks import visible_mask
from attnsuite.impls.spec import AttentionSpec

NAME = "equinox.nn.MultiheadAttention"


def check_supported(spec: AttentionSpec) -> None:
    """Raise ``Unsupported`` for what the layer has no option for."""
    reasons = [
        (spec.H_kv != spec.H,
         "no grouped-query or multi-query attention (one key/value head per query head)"),
        (not scale_is_default(spec),
         "no scale option: logits are always scaled by 1/sqrt(qk_size)"),
        (spec.softcap is not None, "no logit softcap"),
        (spec.rope is not None and (spec.rope.style != "half" or spec.rotary_dim != spec.d_k),
         "its RotaryPositionalEmbedding is half style over the whole head"),
    ]
    decline(NAME, reasons)


def make_layer(spec: AttentionSpec):
    """The layer's structure for ``spec`` (shapes only: ``fn`` brings the weights)."""
    eqx = library("equinox", NAME)
    import jax

    return eqx.filter_eval_shape(lambda: eqx.nn.MultiheadAttention(
        num_heads=spec.H, query_size=spec.E, key_size=spec.E_k, value_size=spec.E_v,
        output_size=spec.E_o, qk_size=spec.d_k, vo_size=spec.d_v, use_query_bias=spec.bias,
        use_key_bias=spec.bias, use_value_bias=spec.bias, use_output_bias=spec.bias,
        dropout_p=spec.dropout, key=jax.random.key(0)))


# Declared, so that the gate declines bias cases up front (calling.call_inputs); fn still
# raises Unsupported for them, for a caller that does not read the declaration.
@call_inputs(bias=False)
def multihead_attention(spec: AttentionSpec):
    library("equinox", NAME)  # a missing library is the reason for every spec
    check_supported(spec)
    layer = make_layer(spec)
    import jax
    import jax.numpy as jnp

    from attnsuite.impls.convert.equinox import to_equinox

    process_heads = None
    if spec.rope is not None:
        import equinox as eqx

        rope = eqx.nn.RotaryPositionalEmbedding(spec.d_k, theta=spec.rope.theta)
        rotate = jax.vmap(rope, in_axes=1, out_axes=1)   # over the heads of (L, heads, d_k)

        def process_heads(query_heads, key_heads, value_heads):
            return rotate(query_heads), rotate(key_heads), value_heads

    def fn(params, query, key, value, mask=None, bias=None, training=False, seed=None):
        if bias is not None:
            raise Unsupported(f"{NAME}: the layer takes no additive attention bias")
        module = to_equinox(spec, params, layer)
        B, L_q, L_k = query.shape[0], query.shape[1], key.shape[1]
        per_head = mask is not None and mask.ndim == 4 and mask.shape[1] > 1
        visible = visible_mask(spec, L_q, L_k, mask, rank=4 if per_head else 3, batch=B,
                               broadcast=True, xp=jnp)  # (B, H, L_q, L_k) or (B, L_q, L_k)
        dropout = training and spec.dropout > 0
        keys = jax.random.split(jax.random.key(seed), B) if dropout else None

        def one(q, k, v, m, rng):
            return module(q, k, v, m, key=rng, inference=not dropout, process_heads=process_heads)

        axes = (0, 0, 0, None if visible is None else 0, None if keys is None else 0)
        return jax.vmap(one, in_axes=axes)(query, key, value, visible, keys)  # (B, L_q, E_o)

    return fn
