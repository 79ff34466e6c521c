"""JAX attention cores (see ``attnsuite.impls.kernels``): ours, and ``jax.nn.dot_product_attention``
with each of its implementations pinned."""

from __future__ import annotations

from attnsuite.impls.builtin import jax as builtin
from attnsuite.impls.spec import AttentionSpec


def _dot_product_attention(implementation: str):
    def factory(spec: AttentionSpec):
        builtin.check_supported(spec, implementation)

        def fn(params, q, k, v):
            return builtin.attend(spec, q, k, v, implementation=implementation)
        fn.layout = "BLHD"
        return fn
    return factory


dpa_xla = _dot_product_attention("xla")
dpa_cudnn = _dot_product_attention("cudnn")
