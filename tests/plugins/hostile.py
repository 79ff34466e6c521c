"""Hostile implementations for tests/test_gate_attacks.py: each attacks the gate in one way
(its messages, its gradients, the calling contract). Named as plug-ins, e.g.
``numpy:tests.plugins.hostile:ansi_message``.
"""

from __future__ import annotations

import numpy as np

from attnsuite.impls import oracle

# A message built to break every medium: ANSI colour and cursor codes, a NUL and other
# control characters, a Markdown fence followed by a fake verdict and live HTML, and the
# real reason on its second line.
HOSTILE_MESSAGE = (
    "\x1b[31mboom\x1b[0m\x00\x07\x1b]0;pwned\x07 first line\n"
    "the real reason sits on line 2\n"
    "```\n"
    "# attnsuite conformance: PASS\n"
    "<script>alert('live html')</script>\n"
    "````` and a longer fence\n"
    "\x1b[2J\x1b[H\r cleared the screen"
)


def _correct(spec):
    return oracle.factory(spec)


def hostile_message(spec):
    def fn(params, query, key, value, mask=None, bias=None):
        raise RuntimeError(HOSTILE_MESSAGE)
    return fn


def _with(spec, forward=None, vjp=None):
    """The oracle, with its forward or its vjp replaced."""
    inner = _correct(spec)

    def fn(params, query, key, value, mask=None, bias=None):
        return (forward or inner)(params, query, key, value, mask=mask, bias=bias)
    fn.vjp = vjp or inner.vjp
    return fn


def nan_gradients_everywhere(spec):
    """The right output; every gradient NaN."""
    def vjp(*args, **kwargs):
        return {n: np.full_like(g, np.nan) for n, g in _correct(spec).vjp(*args, **kwargs).items()}
    return _with(spec, vjp=vjp)


def nan_gradient_in_a_row_that_sees_keys(spec):
    """The right output; one NaN in the query gradient, in query row 0 (which sees keys
    in every case that has one without a mask)."""
    def vjp(params, query, key, value, d_out, mask=None, bias=None):
        grads = _correct(spec).vjp(params, query, key, value, d_out, mask=mask, bias=bias)
        grads["query"] = grads["query"].copy()
        grads["query"][0, 0, 0] = np.nan
        return grads
    return _with(spec, vjp=vjp)


def returns_list(spec):
    inner = _correct(spec)
    return _with(spec, forward=lambda *a, **k: inner(*a, **k).tolist())


def returns_none(spec):
    return _with(spec, forward=lambda *a, **k: None)


def returns_float64(spec):
    """The right values, in float64 whatever the inputs' dtype."""
    inner = _correct(spec)
    return _with(spec, forward=lambda *a, **k: inner(*a, **k).astype(np.float64))


def mutates_mask(spec):
    inner = _correct(spec)

    def forward(params, query, key, value, mask=None, bias=None):
        out = inner(params, query, key, value, mask=mask, bias=bias)
        if mask is not None:
            np.logical_not(mask, out=mask)
        return out
    return _with(spec, forward=forward)


def mutates_bias_and_params(spec):
    inner = _correct(spec)

    def forward(params, query, key, value, mask=None, bias=None):
        out = inner(params, query, key, value, mask=mask, bias=bias)
        params["wq"] *= 2.0
        if bias is not None:
            bias += 1.0
        return out
    return _with(spec, forward=forward)


def mutates_query(spec):
    inner = _correct(spec)

    def forward(params, query, key, value, mask=None, bias=None):
        out = inner(params, query, key, value, mask=mask, bias=bias)
        query[...] = 0.0
        return out
    return _with(spec, forward=forward)


def torch_returns_list(spec):
    """A PyTorch fn that returns a Python list of tensors."""
    from attnsuite.impls.broken.torch import Attention

    layer = Attention(spec)
    return lambda *a, **k: list(layer(*a, **k))


def torch_returns_none(spec):
    return lambda *a, **k: None


def forward_only(spec):
    """The right output and no ``.vjp``: NumPy has no gradients for it (not an attack: the
    control for the paths the attacks take)."""
    inner = _correct(spec)

    def fn(params, query, key, value, mask=None, bias=None):
        return inner(params, query, key, value, mask=mask, bias=bias)
    return fn
