"""JAX attention cores (see ``impls.kernels``): ours, and ``jax.nn.dot_product_attention``
with each of its implementations pinned."""

from __future__ import annotations

import jax

from impls.errors import Unsupported
from impls.ours.jax import fused_attention
from impls.spec import AttentionSpec


def ours(spec: AttentionSpec):
    def fn(params, q, k, v):
        return fused_attention(spec, q, k, v)
    fn.layout = "BLHD"
    return fn


def _dot_product_attention(implementation: str):
    name = f'jax.nn.dot_product_attention(implementation="{implementation}")'

    def factory(spec: AttentionSpec):
        if spec.softcap is not None or spec.causal == "bottom_right" or spec.d_v != spec.d_k:
            raise Unsupported(f"{name}: no softcap, no bottom-right causal, one head size")
        if implementation == "cudnn" and jax.default_backend() != "gpu":
            raise Unsupported(f"{name}: cuDNN needs a GPU (JAX's backend here is {jax.default_backend()})")

        def fn(params, q, k, v):
            return jax.nn.dot_product_attention(
                q, k, v, scale=spec.logit_scale, is_causal=spec.causal == "top_left",
                local_window_size=spec.window, implementation=implementation)
        fn.layout = "BLHD"
        return fn
    return factory


dpa_xla = _dot_product_attention("xla")
dpa_cudnn = _dot_product_attention("cudnn")
