"""Plug-ins that take no additive bias or no per-head mask, as many real layers do: one
declares it (``call_inputs``), one declares the bias it then declines, one declares
nothing. NumPy, with the oracle inside; each ``fn`` declines what its layer lacks."""

from __future__ import annotations

from attnsuite.impls import Unsupported, call_inputs, oracle


def _layer(spec):
    def fn(params, query, key, value, mask=None, bias=None):
        if bias is not None:
            raise Unsupported("my_layer: no additive bias")
        if mask is not None and mask.ndim == 4 and mask.shape[1] > 1:
            raise Unsupported("my_layer: one mask for every head")
        return oracle.forward(spec, params, query, key, value, mask, bias).astype(query.dtype)

    fn.vjp = lambda p, q, k, v, d_out, mask=None, bias=None: oracle.vjp(spec, p, q, k, v, d_out, mask, bias)
    return fn


@call_inputs(bias=False, masks=("rank2", "rank4"), dropout=False)   # fn takes no training=
def declared(spec):
    return _layer(spec)


@call_inputs(bias=True, masks=("rank2", "rank4"), dropout=False)
def claims_bias(spec):
    return _layer(spec)


def undeclared(spec):
    return _layer(spec)


def malformed(spec):
    return _layer(spec)


malformed.call_inputs = {"bias": False, "masks": ("rank2", "per-head")}
