"""``jax.nn.dot_product_attention`` as a user calls it: the canonical projections (and
RoPE, ``ops.jax.rope_qk``) around it, its own ``is_causal`` and ``local_window_size``
options, GQA from the fewer kv heads, and nothing fixed up (a fully masked row keeps
whatever the function gives it).

``dot_product_attention`` leaves the implementation to JAX (XLA, today, even on a GPU);
``dot_product_attention_cudnn`` asks for cuDNN's fused kernel, which runs on a GPU only
and declines some cases (float32, large head sizes): those are reported unsupported.
"""

from __future__ import annotations

import jax

from attnsuite.impls.calling import call_inputs
from attnsuite.impls.errors import Unsupported, decline
from attnsuite.impls.ops.jax import output, project, rope_qk
from attnsuite.impls.spec import AttentionSpec

_NAME = "jax.nn.dot_product_attention"


def function_name(implementation: str | None) -> str:
    return _NAME if implementation is None else f'{_NAME}(implementation="{implementation}")'


def check_supported(spec: AttentionSpec, implementation: str | None) -> None:
    """Raise ``Unsupported`` for a spec the function cannot express with ``implementation``."""
    reasons = [
        # is_causal and local_window_size count from the top-left corner.
        (spec.causal == "bottom_right", "no bottom-right causal alignment"),
        (spec.softcap is not None, "no logit softcap"),
        (spec.d_v != spec.d_k, "value must have the key's head size (value_head_dim != head_dim)"),
        (implementation == "cudnn" and jax.default_backend() != "gpu",
         f"cuDNN needs a GPU (JAX's backend here is {jax.default_backend()})"),
    ]
    decline(function_name(implementation), reasons)


def attend(spec: AttentionSpec, q, k, v, mask=None, bias=None, implementation: str | None = None):
    """The function on projected heads (B, L, heads, d), with the spec's own options; a
    case a pinned implementation declines (cuDNN: float32, some head sizes) is Unsupported."""
    try:
        return jax.nn.dot_product_attention(
            q, k, v, bias=bias, mask=mask, scale=spec.logit_scale,
            is_causal=spec.causal == "top_left", local_window_size=spec.window,
            implementation=implementation)
    except (ValueError, NotImplementedError, RuntimeError) as exc:
        if implementation is None:
            raise
        raise Unsupported(f"{function_name(implementation)} declines this case ({q.dtype}): "
                          f"{str(exc).splitlines()[0]}") from exc


def _layer(implementation: str | None):
    # Declared, so that the gate declines the dropout check up front (calling.call_inputs);
    # fn still raises Unsupported in training, for a caller that does not read it.
    @call_inputs(dropout=False)
    def factory(spec: AttentionSpec):
        check_supported(spec, implementation)

        def fn(params, query, key, value, mask=None, bias=None, training=False, seed=None):
            if training and spec.dropout > 0:
                raise Unsupported(f"{function_name(implementation)}: no dropout")
            q, k = rope_qk(spec, project(spec, params, query, "q"),     # (B, L_q, H, d_k),
                           project(spec, params, key, "k"))             # (B, L_k, H_kv, d_k)
            v = project(spec, params, value, "v")                       # (B, L_k, H_kv, d_v)
            return output(spec, params, attend(spec, q, k, v, mask, bias, implementation))

        return fn
    return factory


dot_product_attention = _layer(None)
dot_product_attention_cudnn = _layer("cudnn")
