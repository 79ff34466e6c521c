"""The ``decode`` check: incremental decoding with a key/value cache, against the oracle's
full causal pass (SPEC 5, "Decoding").

An implementation declares that it decodes by giving its ``fn`` two more functions:

    cache = fn.init_cache(params, batch_size)
    out, cache = fn.decode(params, cache, query, key, value)

``query``, ``key`` and ``value`` are the new tokens only (a chunk of one or more), in the
call form the case is in (self-attention: one tensor); ``out`` is their output. The cache
is the implementation's own: any layout, mutated or returned anew. The check feeds a
sequence as a prefill of half its tokens, then single tokens, then a last chunk of two,
and compares every step's output with the rows of the oracle's causal pass over the whole
sequence: the new queries sit at the end of the keys seen so far (SPEC 3, 1b), so a cache
that is dropped, shifted by one, or positions not offset, show. A second sequence decoded
with a fresh cache must match as well: entries kept from the first show.

Where the framework can differentiate the whole decode (the steps and the cache between
them, as one call: ``decoded_sequence``), the gradients of every weight and input through
the cache must match the oracle's vjp of that causal pass too. A decode the framework
cannot differentiate (NumPy; a cache updated in place past autograd's reach) is judged on
its outputs, and the result says so.
"""

from __future__ import annotations

from attnsuite.conformance import tolerance
from attnsuite.impls import oracle
from attnsuite.impls.backends.common import convert_inputs
from attnsuite.impls.calling import declares_decoding, fold_input_grads
from attnsuite.impls.errors import Unsupported


def decode_chunks(length: int) -> list[tuple[int, int]]:
    """(start, stop) of each step: a prefill of half the tokens, single tokens, a last pair."""
    prefill = max(1, length // 2)
    bounds = [0, prefill]
    while length - bounds[-1] > 2:
        bounds.append(bounds[-1] + 1)
    bounds.append(length)
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def run_decode(backend, fn, data, dtype: str, device: str):
    """Each step's output (float64 NumPy) for the sequence in ``data``."""
    params = backend.params(data.weights, dtype, device)
    cache = fn.init_cache(params, data.query.shape[0])
    outputs = []
    for start, stop in decode_chunks(data.query.shape[1]):
        arrays = (a[:, start:stop] for a in (data.query, data.key, data.value))
        q, k, v, _, _ = convert_inputs(backend.tensor, *arrays, None, None, dtype, device,
                                       data.case.form)   # one tensor where the form passes one
        out, cache = fn.decode(params, cache, q, k, v)
        outputs.append(((start, stop), backend.to_numpy(out)))
    return outputs


def decoded_sequence(fn, concatenate):
    """The whole decode of a sequence as one ``fn(params, query, key, value)``: a fresh cache,
    every step of ``decode_chunks``, the steps' outputs joined along the length
    (``concatenate``: the framework's). One tensor passed as several stays one per step."""
    def whole(params, query, key, value, mask=None, bias=None):
        cache = fn.init_cache(params, query.shape[0])
        outputs = []
        for start, stop in decode_chunks(query.shape[1]):
            steps = {}
            chunk = [steps.setdefault(id(x), x[:, start:stop]) for x in (query, key, value)]
            out, cache = fn.decode(params, cache, *chunk)
            outputs.append(out)
        return concatenate(outputs, 1)
    return whole


def _judge_gradients(judge, fn, data) -> str | None:
    """Gradients through the cache against the oracle's vjp of the causal pass. Adds the
    failing ``decode`` result and returns None when one disagrees; else the passing
    result's note: that they match, or why they were not taken."""
    case, backend = judge.case, judge.subject.backend
    args = (case.spec, data.weights, data.query, data.key, data.value)
    try:
        _, grads = backend.forward_and_vjp(decoded_sequence(fn, backend.concatenate), *args[1:],
                                           data.d_out, dtype=case.dtype, device=judge.options.device,
                                           form=case.form)
    except Exception as exc:   # Unsupported, or a cache that autograd cannot see through
        return f"; gradients through the cache not taken ({type(exc).__name__}: {str(exc).strip()[:200]})"
    expected = fold_input_grads(oracle.vjp(*args, data.d_out), case.form)
    baseline = (fold_input_grads(oracle.vjp(*args, data.d_out, precision=case.dtype), case.form)
                if case.dtype in tolerance.BASELINE_RULE else None)
    scale = tolerance.gradient_scale(expected)
    for name, want in expected.items():
        if name not in grads:
            judge.add("decode", "fail", f"no gradient for {name!r} through the cache (got {sorted(grads)})")
            return None
        comparison = tolerance.compare_gradient(name, grads[name], want, case.dtype, scale=scale,
                                                baseline=None if baseline is None else baseline[name])
        if not comparison.ok:
            judge.add("decode", "fail", f"gradient {name!r} through the cache: "
                      f"{comparison.describe()}; do the steps keep the graph to the cached keys "
                      f"and values?", comparison.ratio, **comparison.worst())
            return None
    return ", and so do the gradients through the cache"


def judge_decode(judge, fn, ref) -> None:
    """Add the ``decode`` result of one case to ``judge`` (a checks._Judge)."""
    if not declares_decoding(fn):
        raise Unsupported("fn declares no decoding (fn.init_cache and fn.decode)")
    case = judge.case
    if case.spec.causal is None or case.L_q != case.L_k:
        raise ValueError(f"{case.id}: decoding needs a causal spec and L_q == L_k")
    sequences = [("first sequence", ref.data),
                 ("second sequence (a fresh cache)", case.replace(seed=(case.seed + 1) % 2 ** 32).materialize())]
    for what, data in sequences:
        args = (case.spec, data.weights, data.query, data.key, data.value)
        full = oracle.forward(*args)
        baseline = oracle.forward(*args, precision=case.dtype) if case.dtype in tolerance.BASELINE_RULE else None
        for (start, stop), out in run_decode(judge.subject.backend, fn, data, case.dtype,
                                             judge.options.device):
            rows = slice(start, stop)
            comparison = tolerance.compare(out, full[:, rows], case.dtype,
                                           baseline=None if baseline is None else baseline[:, rows])
            if not comparison.ok:
                judge.add("decode", "fail", f"{what}, step over tokens [{start}, {stop}) of "
                          f"{case.L_q}: {comparison.describe()}; is the cache kept, aligned and "
                          f"reset?", comparison.ratio, **comparison.worst(), tokens=[start, stop])
                return
    gradients = _judge_gradients(judge, fn, ref.data)
    if gradients is None:
        return
    steps = len(decode_chunks(case.L_q))
    judge.add("decode", "pass", f"2 sequences of {case.L_q} tokens in {steps} steps each, every "
              f"step matches the oracle's causal pass{gradients}")
