"""A layer whose only way to hide keys is a boolean mask, declaring causal and window
support through ``attnsuite.visible_mask``: the README's plug-in example, verbatim."""

import jax
import jax.numpy as jnp

from attnsuite import Unsupported, call_inputs, visible_mask


def my_layer(params, q, k, v, mask, heads):  # mask: (B, H, L_q, L_k) or None, True = attend
    def split(x, name):
        return (x @ params["w" + name] + params.get("b" + name, 0)).reshape(*x.shape[:2], heads, -1)

    q, k, v = split(q, "q"), split(k, "k"), split(v, "v")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    heads_out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits), v)
    return heads_out.reshape(*heads_out.shape[:2], -1) @ params["wo"] + params.get("bo", 0)


@call_inputs(bias=False, dropout=False)   # fn takes any mask layout, no bias, no training=
def factory(spec):
    if spec.H_kv != spec.H or spec.softcap or spec.scale or spec.rope:
        raise Unsupported("my_layer: no grouped heads, softcap, custom scale or rotary positions")

    def fn(params, query, key, value, mask=None, bias=None):
        if bias is not None:
            raise Unsupported("my_layer: no additive bias")
        # causal + window + the user's mask, as the (B, H, L_q, L_k) mask my_layer takes
        visible = visible_mask(spec, query.shape[1], key.shape[1], mask, rank=4, xp=jnp)
        return my_layer(params, query, key, value, visible, spec.H)

    return fn
