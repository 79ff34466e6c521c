"""PyTorch decoders for the gradients of the ``decode`` check: a cache of the key and value
inputs that keeps the graph, and one that detaches what it caches (every step's output is
right; only the gradients through the cache show it). ``torch:tests.plugins.torch_decoders:NAME``."""

from __future__ import annotations

import torch

from attnsuite.impls.ours import torch as ours


def _decoder(spec, keep):
    fn = ours.explicit(spec)
    step = ours.explicit(spec.replace(causal="bottom_right"))   # new queries at the end

    def init_cache(params, batch_size):
        return None

    def decode(params, cache, query, key, value):
        if cache is not None:
            key, value = (torch.cat([old, keep(new)], dim=1) for old, new in zip(cache, (key, value)))
        return step(params, query, key, value), (keep(key), keep(value))

    fn.init_cache, fn.decode = init_cache, decode
    return fn


def correct(spec):
    return _decoder(spec, keep=lambda x: x)


def detached_cache(spec):
    return _decoder(spec, keep=torch.Tensor.detach)
