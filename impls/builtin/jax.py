"""``jax.nn.dot_product_attention`` as a user calls it: the canonical projections around
it, its own ``is_causal`` and ``local_window_size`` options, GQA from the fewer kv heads,
and nothing fixed up (a fully masked row keeps whatever the function gives it)."""

from __future__ import annotations

import jax

from impls.errors import Unsupported
from impls.ours.jax import output, project
from impls.spec import AttentionSpec

_NAME = "jax.nn.dot_product_attention"


def dot_product_attention(spec: AttentionSpec):
    reasons = [
        # is_causal and local_window_size count from the top-left corner.
        (spec.causal == "bottom_right", "no bottom-right causal alignment"),
        (spec.softcap is not None, "no logit softcap"),
        (spec.d_v != spec.d_k, "value must have the key's head size (value_head_dim != head_dim)"),
    ]
    for failing, why in reasons:
        if failing:
            raise Unsupported(f"{_NAME}: {why}")

    def fn(params, query, key, value, mask=None, bias=None, training=False, seed=None):
        if training and spec.dropout > 0:
            raise Unsupported(f"{_NAME}: no dropout")
        heads = jax.nn.dot_product_attention(
            project(spec, params, query, "q"), project(spec, params, key, "k"),
            project(spec, params, value, "v"), bias=bias, mask=mask, scale=spec.logit_scale,
            is_causal=spec.causal == "top_left", local_window_size=spec.window)
        return output(spec, params, heads)

    return fn
