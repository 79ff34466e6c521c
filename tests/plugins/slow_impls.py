"""Plug-ins that do the same work as a shipped implementation several times over: the
"power" side of ``bench compare`` (a real slowdown must read as ``regressed``).

``ATTNSUITE_TEST_REPEAT`` (default 1) says how many times: one name then stands for the
unchanged code (1) and for a change that made it slower (2), as two runs of one
implementation would, e.g. ``torch:tests.plugins.slow_impls:torch_fused``. The result is
the mean of the repeats (equal to one call's), so the backward repeats too.
"""

from __future__ import annotations

import os

from attnsuite.impls import oracle
from attnsuite.impls.registry import resolve


def _repeat() -> int:
    return int(os.environ.get("ATTNSUITE_TEST_REPEAT", "1"))


def torch_fused(spec):
    inner = resolve("torch.fused")[1](spec)
    repeat = _repeat()
    if repeat == 1:  # the unchanged code itself, not a wrapper around it
        return inner

    def fn(params, query, key, value, mask=None, bias=None, **kwargs):
        outputs = [inner(params, query, key, value, mask, bias, **kwargs) for _ in range(repeat)]
        return sum(outputs) / repeat
    return fn


def numpy_oracle(spec):
    inner = oracle.factory(spec)
    repeat = _repeat()
    if repeat == 1:
        return inner

    def fn(params, query, key, value, mask=None, bias=None):
        return [inner(params, query, key, value, mask, bias) for _ in range(repeat)][-1]

    def fn_vjp(params, query, key, value, d_out, mask=None, bias=None):
        return [inner.vjp(params, query, key, value, d_out, mask, bias) for _ in range(repeat)][-1]

    fn.vjp = fn_vjp
    return fn
