"""PyTorch attention cores (see ``attnsuite.impls.kernels``): ours, and SDPA with one backend pinned."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnsuite.impls.errors import Unsupported
from attnsuite.impls.spec import AttentionSpec

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


def _sdpa(backend: str | None):
    """A factory for SDPA restricted to ``backend`` (None: PyTorch's own dispatch)."""
    name = f"scaled_dot_product_attention[{backend or 'default'}]"

    def factory(spec: AttentionSpec):
        if spec.window is not None or spec.softcap is not None or spec.causal == "bottom_right":
            raise Unsupported(f"{name}: the kernel benchmark times the plain and top-left causal cores only")

        def fn(params, q, k, v):
            pinned = sdpa_kernel(BACKENDS[backend]) if backend else contextlib.nullcontext()
            try:
                with pinned:
                    return F.scaled_dot_product_attention(
                        q, k, v, is_causal=spec.causal == "top_left", scale=spec.logit_scale,
                        enable_gqa=spec.H_kv != spec.H)
            except RuntimeError as exc:  # "No available kernel": the backend declines the case
                if backend and "kernel" in str(exc).lower():
                    raise Unsupported(f"{name} declines this case on {q.device.type}, {q.dtype}: "
                                      f"{str(exc).splitlines()[0]}") from exc
                raise
        fn.layout = "BHLD"
        return fn
    return factory


sdpa_default = _sdpa(None)
sdpa_flash = _sdpa("flash")
sdpa_efficient = _sdpa("efficient")
sdpa_cudnn = _sdpa("cudnn")
sdpa_math = _sdpa("math")

