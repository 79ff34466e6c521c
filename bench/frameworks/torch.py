"""PyTorch: eager or ``torch.compile``; CUDA work is asynchronous, so ``block`` synchronises."""

from __future__ import annotations

import torch

from attnsuite.bench.frameworks import is_keras_layer, keras_layer_count, reset_rss_peak, rss_peak, sources_of

COMPILE = {"eager": "eager PyTorch", "jit": "torch.compile (inductor)"}
_DEVICES = {"cpu": "cpu", "gpu": "cuda"}


def configure(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def info(device: str) -> dict:
    found = {"name": "torch", "version": torch.__version__, "device": device,
             "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
             "float32_matmul_precision": torch.get_float32_matmul_precision()}
    if device == "gpu":
        found.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                     cudnn=torch.backends.cudnn.version(),
                     allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return found


def synchronize(device: str) -> None:
    if device == "gpu":
        torch.cuda.synchronize()


def _blocker(device: str):
    def block(result):
        synchronize(device)
        return result
    return block


def prepare(fn, params, inputs, mode, compile="eager"):
    forward = torch.compile(fn) if compile == "jit" else fn
    block = _blocker("gpu" if inputs["query"].is_cuda else "cpu")
    sources, expand = sources_of(inputs)
    if mode == "forward":
        q, k, v = expand(sources)

        def call():
            with torch.no_grad():
                return forward(params, q, k, v)
        return call, block

    # Leaves of our own, so that the forward-only call above never builds a graph.
    leaf_params = {name: p.detach().requires_grad_() for name, p in params.items()}
    leaf_sources = tuple(s.detach().requires_grad_() for s in sources)
    wrt = [*leaf_sources, *leaf_params.values()]
    d_out = inputs["d_out"]

    def call():
        out = forward(leaf_params, *expand(leaf_sources))
        return torch.autograd.grad(out, wrt, grad_outputs=d_out, allow_unused=True)
    return call, block


def reset_peak_memory(device: str) -> int | None:
    if device == "gpu":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return reset_rss_peak()


def peak_memory(device: str) -> tuple[int | None, str]:
    if device == "gpu":
        return torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    return rss_peak()


def is_layer(value) -> bool:
    return isinstance(value, torch.nn.Module) or is_keras_layer(value)


def layer_params(layer, inputs) -> int:
    keras_count = keras_layer_count(layer)
    return keras_count if keras_count is not None else sum(p.numel() for p in layer.parameters())


def matmul(n: int, dtype: str, device: str):
    a, b = (torch.randn(n, n, dtype=getattr(torch, dtype), device=_DEVICES[device]) for _ in range(2))
    return (lambda: a @ b), _blocker(device)


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(exc)


def compiled_memory(call) -> tuple[int | None, str]:
    return None, "PyTorch runs op by op: its peak is the allocator's"
