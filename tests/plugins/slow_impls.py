"""Plug-ins that do the same work as a shipped implementation more than once: the
"power" side of ``bench compare`` (a real slowdown must read as ``regressed``).

``ATTNSUITE_TEST_REPEAT`` (default 1) says how much: one name then stands for the
unchanged code (1) and for a change that made it slower (2: the work twice), as two runs
of one implementation would, e.g. ``torch:tests.plugins.slow_impls:torch_fused``. A
fraction repeats the work on that fraction of the sequence (1.3: once in full, once more
on the first 30% of the positions, about 1.3x the projections). The output is the first
call's; the extra calls join the graph with a zero weight, so the backward repeats too.
"""

from __future__ import annotations

import math
import os

from attnsuite.impls import oracle
from attnsuite.impls.registry import resolve


def _repeat() -> float:
    return float(os.environ.get("ATTNSUITE_TEST_REPEAT", "1"))


def _extra_calls(repeat: float) -> list[float]:
    """The fractions of the sequence each extra call covers: 2 -> [1.0], 1.3 -> [0.3]."""
    whole, part = int(math.floor(repeat)), repeat - math.floor(repeat)
    return [1.0] * (whole - 1) + ([part] if part > 1e-9 else [])


def _slice(x, fraction: float):
    return x[:, :max(1, round(fraction * x.shape[1]))]


def torch_fused(spec):
    inner = resolve("torch.fused")[1](spec)
    extra = _extra_calls(_repeat())
    if not extra:  # the unchanged code itself, not a wrapper around it
        return inner

    def fn(params, query, key, value, mask=None, bias=None, **kwargs):
        out = inner(params, query, key, value, mask, bias, **kwargs)
        for fraction in extra:
            if fraction == 1.0:
                more = inner(params, query, key, value, mask, bias, **kwargs)
            else:  # self-attention stays self-attention: one tensor sliced once
                q = _slice(query, fraction)
                k = q if key is query else _slice(key, fraction)
                v = q if value is query else _slice(value, fraction)
                more = inner(params, q, k, v, None, None, **kwargs)
            out = out + 0 * more.sum()
        return out
    return fn


def numpy_oracle(spec):
    """Whole repeats only."""
    inner = oracle.factory(spec)
    extra = _extra_calls(_repeat())
    if any(fraction != 1.0 for fraction in extra):
        raise ValueError(f"ATTNSUITE_TEST_REPEAT: numpy_oracle repeats whole calls, got {_repeat()}")
    if not extra:
        return inner

    def fn(params, query, key, value, mask=None, bias=None):
        for _ in extra:
            inner(params, query, key, value, mask, bias)
        return inner(params, query, key, value, mask, bias)

    def fn_vjp(params, query, key, value, d_out, mask=None, bias=None):
        for _ in extra:
            inner.vjp(params, query, key, value, d_out, mask, bias)
        return inner.vjp(params, query, key, value, d_out, mask, bias)

    fn.vjp = fn_vjp
    return fn
