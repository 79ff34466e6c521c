"""Throwaway NumPy implementations for the suite's own tests: one right, the rest wrong
in one known way each. Named as plug-ins, e.g. ``numpy:tests.plugins.numpy_impls:naive_softmax``.

NumPy has no autodiff: each fn carries a ``.vjp`` (the oracle's, unless the flaw is in the
backward), which the NumPy adapter uses for the gradients.
"""

from __future__ import annotations

import numpy as np

from attnsuite.impls import Unsupported, oracle
from attnsuite.impls.spec import AttentionSpec


def _with_vjp(forward, vjp):
    def fn(params, query, key, value, mask=None, bias=None):
        out = forward(params, query, key, value, mask, bias)
        return out.astype(query.dtype, copy=False)   # the contract: the inputs' dtype

    def fn_vjp(params, query, key, value, d_out, mask=None, bias=None):
        return vjp(params, query, key, value, d_out, mask, bias)

    fn.vjp = fn_vjp
    return fn


def _oracle_vjp(spec, precision=None):
    return lambda p, q, k, v, d_out, mask, bias: oracle.vjp(spec, p, q, k, v, d_out, mask, bias,
                                                            precision=precision)


# ---------------------------------------------------------------------------------------
# A compact forward whose softmax (or whatever replaces it) is pluggable.

def softmax(logits, visible):
    """The right one: max-subtracted, invisible keys weigh 0, empty rows are zeros."""
    return oracle._masked_softmax(logits, visible)


def naive_softmax(logits, visible):
    """No max subtraction: exp() overflows on large logits."""
    e = np.where(visible, np.exp(logits), np.zeros((), logits.dtype))
    return e / e.sum(axis=-1, keepdims=True)


def fill_softmax(fill):
    """Masking by writing ``fill`` into the logits: -inf gives NaN rows, a finite number
    gives a uniform average on empty rows (and leaks exp(fill) onto masked keys)."""
    def probs(logits, visible):
        s = np.where(visible, logits, fill)
        s = s - s.max(axis=-1, keepdims=True)
        e = np.exp(s)
        return e / e.sum(axis=-1, keepdims=True)
    return probs


def repeat_heads(x, group):
    """(B, H_kv, L, d) -> (B, H, L, d): query head h reads key/value head h // group."""
    return np.repeat(x, group, axis=1)


def attend(spec: AttentionSpec, p, query, key, value, mask=None, bias=None, probs=softmax,
           expand=repeat_heads):
    """In the dtype it is handed, as float32 code would be."""
    def project(x, letter, heads):
        y = x @ p["w" + letter] + (p["b" + letter] if spec.bias else 0.0)
        return y.reshape(y.shape[0], y.shape[1], heads, -1).transpose(0, 2, 1, 3)

    q, k = project(query, "q", spec.H), project(key, "k", spec.H_kv)
    if spec.rope is not None:   # the oracle's rotation, at the SPEC positions
        q_positions, k_positions = oracle.rope_positions(q.shape[2], k.shape[2])
        q = oracle.rotate(spec, q, oracle.rope_angles(spec, q_positions))
        k = oracle.rotate(spec, k, oracle.rope_angles(spec, k_positions))
    k = expand(k, spec.group_size)
    v = expand(project(value, "v", spec.H_kv), spec.group_size)
    s = spec.logit_scale * q @ k.transpose(0, 1, 3, 2)
    if spec.softcap is not None:
        s = spec.softcap * np.tanh(s / spec.softcap)
    if bias is not None:
        s = s + bias
    s = s.astype(q.dtype)
    visible = oracle.visibility(spec, q.shape[0], q.shape[2], k.shape[2], mask)
    with np.errstate(all="ignore"):
        heads = probs(s, visible) @ v
    heads = heads.transpose(0, 2, 1, 3).reshape(q.shape[0], q.shape[2], -1)
    return heads @ p["wo"] + (p["bo"] if spec.bias else 0.0)


def _softmax_variant(spec, probs):
    return _with_vjp(lambda *a: attend(spec, *a, probs=probs), _oracle_vjp(spec))


# ---------------------------------------------------------------------------------------
# The factories.

def correct(spec):
    return _with_vjp(lambda *a: attend(spec, *a), _oracle_vjp(spec))


def float32_inside(spec):
    """Right in float32; computes in float32 even when handed float64."""
    return _with_vjp(lambda *a: oracle.forward(spec, *a, precision="float32"),
                     _oracle_vjp(spec, "float32"))


def wrong_scale(spec):
    """Scales the logits by 1/d_k instead of 1/sqrt(d_k)."""
    wrong = spec.replace(scale=1.0 / spec.d_k)
    return _with_vjp(lambda *a: oracle.forward(wrong, *a), _oracle_vjp(wrong))


def wrong_key_grad(spec):
    """A right forward with a gradient for ``key`` that is off by 1%."""
    def vjp(*a):
        grads = oracle.vjp(spec, *a)
        grads["key"] = grads["key"] * 1.01
        return grads
    return _with_vjp(lambda *a: oracle.forward(spec, *a), vjp)


def gqa_tiled(spec):
    """Shares key/value heads by tiling (head h reads h % H_kv) instead of h // group."""
    tile = lambda x, group: np.tile(x, (1, group, 1, 1))  # noqa: E731
    return _with_vjp(lambda *a: attend(spec, *a, expand=tile), _oracle_vjp(spec))


def naive(spec):
    return _softmax_variant(spec, naive_softmax)


def leaky_mask(spec):
    """Masks with an additive -20: a weight of e^-20 leaks onto every masked key."""
    return _softmax_variant(spec, lambda s, visible: softmax(np.where(visible, s, s - 20.0),
                                                             np.ones_like(visible)))


def uniform_fully_masked(spec):
    return _softmax_variant(spec, fill_softmax(-1e30))


def nan_fully_masked(spec):
    """-inf masking without a guard: NaN rows, and NaN gradients through them."""
    def vjp(p, q, k, v, d_out, mask, bias):
        grads = oracle.vjp(spec, p, q, k, v, d_out, mask, bias)
        empty = ~oracle.visibility(spec, q.shape[0], q.shape[1], k.shape[1], mask).any(-1)
        if empty.any():  # NaN * 0 is NaN: every gradient except bo's
            grads = {n: g if n == "bo" else np.full_like(g, np.nan) for n, g in grads.items()}
        return grads
    return _with_vjp(lambda *a: attend(spec, *a, probs=fill_softmax(-np.inf)), vjp)


def raises(spec):
    def fn(params, query, key, value, mask=None, bias=None):
        raise RuntimeError("boom: this implementation always raises")
    return fn


def exits_process(spec):
    """Takes its whole process down (a segfaulting kernel, an os._exit in a library)."""
    import os

    def fn(params, query, key, value, mask=None, bias=None):
        os._exit(3)
    return fn


def factory_raises(spec):
    raise RuntimeError("boom: this factory always raises")


def unsupported_gqa(spec):
    if spec.H_kv != spec.H:
        raise Unsupported("no grouped-query attention here")
    return correct(spec)


def wrong_shape(spec):
    inner = correct(spec)
    return _with_vjp(lambda *a: inner(*a)[..., :-1], inner.vjp)


def returns_nan(spec):
    inner = correct(spec)
    return _with_vjp(lambda *a: np.full_like(inner(*a), np.nan), inner.vjp)


def stateful(spec):
    """Keeps the weights of its first call (a port that caches converted weights)."""
    cache = {}

    def forward(p, *a):
        cache.setdefault("params", p)
        return attend(spec, cache["params"], *a)
    return _with_vjp(forward, _oracle_vjp(spec))


def cached_by_shape(spec):
    """Remembers its output per input shape (a cache keyed on shapes, never invalidated)."""
    cache = {}

    def forward(p, query, key, value, mask, bias):
        shapes = (query.shape, key.shape, value.shape)
        if shapes not in cache:
            cache[shapes] = attend(spec, p, query, key, value, mask, bias)
        return cache[shapes]
    return _with_vjp(forward, _oracle_vjp(spec))


def nondeterministic(spec):
    """Within float32 tolerance, but never the same bits twice."""
    calls = []

    def forward(*a):
        calls.append(None)
        return attend(spec, *a) * (1.0 + 1e-7 * len(calls))
    return _with_vjp(forward, _oracle_vjp(spec))


# Dropout: the right one, and two classic mistakes.

def _dropout(spec, drop_probability, rescale):
    def fn(params, query, key, value, mask=None, bias=None, training=False, seed=None):
        if not (training and spec.dropout):
            return attend(spec, params, query, key, value, mask, bias)
        rng = np.random.default_rng(seed)

        def probs(logits, visible):
            kept = rng.random(logits.shape) >= drop_probability(spec.dropout)
            return softmax(logits, visible) * kept * rescale(spec.dropout)
        return attend(spec, params, query, key, value, mask, bias, probs=probs)

    fn.vjp = _oracle_vjp(spec)
    return fn


def dropout(spec):
    return _dropout(spec, lambda p: p, lambda p: 1.0 / (1.0 - p))


def dropout_no_rescale(spec):
    return _dropout(spec, lambda p: p, lambda p: 1.0)


def dropout_keeps_p(spec):
    """Drops with probability 1 - p (keep and drop swapped), rescaled by 1/p."""
    return _dropout(spec, lambda p: 1.0 - p, lambda p: 1.0 / p)


def frozen_weights(spec):
    """Ignores ``params``: uses the weights in the file named by ATTNSUITE_TEST_WEIGHTS."""
    import os

    from attnsuite.conformance.weights import load_weights
    _, weights = load_weights(os.environ["ATTNSUITE_TEST_WEIGHTS"])
    return _with_vjp(lambda p, *a: attend(spec, weights, *a),
                     lambda p, *a: oracle.vjp(spec, weights, *a))
