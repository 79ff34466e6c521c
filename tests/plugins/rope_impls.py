"""NumPy layers that get RoPE wrong in one known way each, for ``attnsuite port``'s tests:
``numpy:tests.plugins.rope_impls:swapped_style`` rotates the other pairs than the spec says."""

from __future__ import annotations

from attnsuite.impls import oracle

OTHER_STYLE = {"half": "interleaved", "interleaved": "half"}


def swapped_style(spec):
    wrong = spec if spec.rope is None else spec.replace(
        rope=dict(spec.rope.to_dict(), style=OTHER_STYLE[spec.rope.style]))

    def fn(params, query, key, value, mask=None, bias=None):
        return oracle.forward(wrong, params, query, key, value, mask, bias).astype(query.dtype)

    fn.vjp = lambda params, query, key, value, d_out, mask=None, bias=None: oracle.vjp(
        wrong, params, query, key, value, d_out, mask, bias)
    return fn
