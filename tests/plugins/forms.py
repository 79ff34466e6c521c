"""Plug-ins that take one call form only, as real layers do: written the way a user wraps a
self-attention layer (``forward(hidden_states)``) or a decoder's cross-attention
(``forward(hidden_states, encoder_hidden_states)``). NumPy, with the oracle inside."""

from __future__ import annotations

from attnsuite.impls import Unsupported, oracle
from attnsuite.impls.calling import call_forms

CALLS = []   # what each factory was told, for the tests


def _layer(spec):
    def fn(params, query, key, value, mask=None, bias=None):   # in the inputs' dtype (SPEC 5)
        return oracle.forward(spec, params, query, key, value, mask, bias).astype(query.dtype)

    fn.vjp = lambda p, q, k, v, d_out, mask=None, bias=None: oracle.vjp(spec, p, q, k, v, d_out, mask, bias)
    return fn


@call_forms("self")
def self_only(spec, form="qkv", dtype=None, device=None):
    CALLS.append(("self_only", form, dtype, device))
    assert form == "self", f"a self-only layer was asked for form {form!r}"
    layer = _layer(spec)

    def fn(params, query, key, value, mask=None, bias=None):
        assert query is key is value, "a self-attention layer got three different tensors"
        return layer(params, query, key, value, mask, bias)

    fn.vjp = layer.vjp
    return fn


@call_forms("kv")
def memory_only(spec, **context):
    CALLS.append(("memory_only", context["form"], context["dtype"], context["device"]))
    layer = _layer(spec)

    def fn(params, query, key, value, mask=None, bias=None):
        assert key is value, "a cross-attention layer got key and value apart"
        return layer(params, query, key, value, mask, bias)

    fn.vjp = layer.vjp
    return fn


def picky(spec):
    """Declines every spec but plain multi-head self-sized attention with biases."""
    plain = spec.replace(causal=None, window=None, softcap=None, num_kv_heads=None, kdim=None,
                         vdim=None, bias=True, dropout=0.0, scale=None, out_dim=None)
    if spec != plain:
        raise Unsupported("only plain multi-head attention")
    return _layer(spec)
