"""haiku's ``hk.MultiHeadAttention`` behind the suite's contract, with its own semantics.

The layer runs under ``hk.transform``; the canonical params become its params inside
``fn`` (``attnsuite.impls.convert.haiku``: a renaming). It takes a query/key size, a value
size, an output size (``model_size``) and one ``with_bias`` for all four projections. It
has no causal or window option and no dropout: its mask (broadcast to [B, H, L_q, L_k],
True = attend) carries causal and window, built by ``attnsuite.impls.masks.visible_mask``.
"""

from __future__ import annotations

from attnsuite.impls.builtin import scale_is_default
from attnsuite.impls.builtin.optional import library
from attnsuite.impls.calling import call_inputs
from attnsuite.impls.errors import Unsupported, decline
from attnsuite.impls.masks import visible_mask
from attnsuite.impls.spec import AttentionSpec

NAME = "haiku.MultiHeadAttention"


def check_supported(spec: AttentionSpec) -> None:
    """Raise ``Unsupported`` for what the layer has no option for."""
    reasons = [
        (spec.H_kv != spec.H,
         "no grouped-query or multi-query attention (one key/value head per query head)"),
        (not scale_is_default(spec),
         "no scale option: logits are always scaled by 1/sqrt(key_size)"),
        (spec.softcap is not None, "no logit softcap"),
        (spec.rope is not None, "no rotary positions option (the projections are inside the layer)"),
    ]
    decline(NAME, reasons)


def transformed(spec: AttentionSpec):
    """``hk.transform`` of the layer built for ``spec``: ``.init`` and ``.apply(params, None,
    query, key, value, mask)``."""
    hk = library("haiku", NAME)

    def layer(query, key, value, mask=None):
        return hk.MultiHeadAttention(
            num_heads=spec.H, key_size=spec.d_k, value_size=spec.d_v, model_size=spec.E_o,
            w_init=hk.initializers.VarianceScaling(1.0), with_bias=spec.bias)(query, key, value, mask)

    return hk.transform(layer)


# Declared, so that the gate declines those cases up front (calling.call_inputs); fn still
# raises Unsupported for them, for a caller that does not read the declaration.
@call_inputs(bias=False, dropout=False)
def multi_head_attention(spec: AttentionSpec):
    library("haiku", NAME)  # a missing library is the reason for every spec
    check_supported(spec)
    layer = transformed(spec)
    import jax.numpy as jnp

    from attnsuite.impls.convert.haiku import to_haiku

    def fn(params, query, key, value, mask=None, bias=None, training=False, seed=None):
        if bias is not None:
            raise Unsupported(f"{NAME}: the layer takes no additive attention bias")
        if training and spec.dropout > 0:
            raise Unsupported(f"{NAME}: no dropout")
        # (B or 1, H or 1, L_q, L_k): the layer broadcasts it over batch and heads
        visible = visible_mask(spec, query.shape[1], key.shape[1], mask, rank=4, xp=jnp)
        return layer.apply(to_haiku(spec, params), None, query, key, value, visible)

    return fn
