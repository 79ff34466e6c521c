"""Attention cores for the kernel benchmark: ours and each framework's fastest kernels.

A layer's cost is its projections plus its attention core; to say whether our fused
path is as fast as the best kernel a framework has, the cores are timed alone, on
already projected heads. Each entry names a factory ``factory(spec) -> fn`` in
``attnsuite.impls.kernels.{torch,jax}`` (ours: ``kernel`` in ``attnsuite.impls.ours.{torch,jax}``,
so that these modules import nothing of ours) with

    fn(params, q, k, v) -> per-head outputs

``params`` is an empty dict (a core holds no weights; the argument keeps the SPEC 5
calling convention, so the benchmark harness times cores and layers alike), and
``fn.layout`` says where the heads sit: "BHLD" (PyTorch: batch, heads, length, head
size) or "BLHD" (JAX). k and v carry ``spec.H_kv`` heads. A kernel that cannot run a
case (a backend absent from this build or device) raises ``Unsupported``.

Only the benchmark uses these: they are not layers, so the conformance gate does not
list them (it checks our cores through ``torch.fused``/``jax.fused``).
"""

from __future__ import annotations

from attnsuite.impls.entry import Entry


def _k(name: str, framework: str, attr: str, description: str, package: str = "kernels") -> Entry:
    return Entry(name, framework, f"attnsuite.impls.{package}.{framework}:{attr}", description, "kernel")


KERNELS: tuple[Entry, ...] = (
    _k("core.torch.fused", "torch", "kernel", "ours: the attention core of torch.fused", "ours"),
    _k("core.torch.sdpa", "torch", "sdpa_default", "F.scaled_dot_product_attention, PyTorch's own choice"),
    _k("core.torch.sdpa.flash", "torch", "sdpa_flash", "SDPA pinned to its FlashAttention backend"),
    _k("core.torch.sdpa.efficient", "torch", "sdpa_efficient", "SDPA pinned to its memory-efficient backend"),
    _k("core.torch.sdpa.cudnn", "torch", "sdpa_cudnn", "SDPA pinned to its cuDNN backend"),
    _k("core.torch.sdpa.math", "torch", "sdpa_math", "SDPA pinned to its math (unfused) backend"),
    _k("core.jax.fused", "jax", "kernel", "ours: the attention core of jax.fused", "ours"),
    _k("core.jax.dpa.xla", "jax", "dpa_xla", 'jax.nn.dot_product_attention(implementation="xla")'),
    _k("core.jax.dpa.cudnn", "jax", "dpa_cudnn", 'jax.nn.dot_product_attention(implementation="cudnn")'),
)


def ours_for(framework: str) -> str:
    """The name of our core in ``framework``."""
    return f"core.{framework}.fused"
