"""The catalog of bug hypotheses: the mistakes attention code is known to make, each
with an id, a line a user understands, and the spec computed *with that mistake*.

Each hypothesis has a ``kind``, which says how ``conformance/diagnosis.py`` holds an
implementation's results to it:

- "output": ``predict(ref, actual)`` gives the output the mistake produces on the
  case; it explains a failing output that matches it within the gate's own tolerance.
- "gradient": the forward is right; ``predict`` gives the gradients the mistaken
  backward produces, matched within the gate's gradient tolerance.
- "precision": ``predict`` gives the whole computation rounded to a lower precision;
  rounding cannot be matched element by element, so it explains an output whose error
  has the size of that rounding (between 1/30 and 3 times it).
- "decode": for a failing ``decode`` check (conformance/decode.py); ``predict`` gives
  what a decoder with that mistake outputs at each step of the check's schedule,
  stitched into one (B, L, E_o) array, and is matched like an "output" one. (A mistake
  of the layer itself decodes as the full pass with that mistake: the "output"
  hypotheses are held to the stitched steps too.)
- "evidence": ``predict(results, fresh_call_matches)`` reads the case's own check
  results (NaN gradients from rows with no visible key; a failed stateless check while
  a fresh layer's first call on the case matches the oracle; a failed decode check
  while the first sequence decodes right).

``predict`` returns None where the mistake cannot show in the case (a mask hypothesis
on a case without a mask). Variants are ``variant.Steps`` with one step changed, or
``Steps`` on changed inputs or a changed spec; the oracle itself is never altered.

Left out: dropout at inference (random weights cannot be matched element by element;
only a statistical test could tell, and the dropout check already judges the training
path).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from attnsuite.conformance.decode import decode_chunks
from attnsuite.conformance.variant import Steps
from attnsuite.impls.calling import fold_input_grads
from attnsuite.impls import oracle

KINDS = ("output", "gradient", "precision", "decode", "evidence")


@dataclasses.dataclass(frozen=True)
class Prediction:
    out: np.ndarray
    rows: np.ndarray | None = None   # (B, L_q) bool: the rows to compare (None: all the gate compares)
    grads: dict | None = None
    note: str = ""                   # a fitted parameter, said in the verdict


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    id: str
    explanation: str
    kind: str
    predict: Callable


HYPOTHESES: list[Hypothesis] = []


def _hypothesis(id: str, explanation: str, kind: str = "output"):
    def register(predict):
        HYPOTHESES.append(Hypothesis(id, explanation, kind, predict))
        return predict
    return register


def _variant(**methods) -> type:
    """A Steps with the given methods replaced: one mistake."""
    return type("Variant", (Steps,), methods)


def _run(ref, steps: type = Steps, spec=None, **inputs) -> Prediction:
    """The variant's forward on the case's inputs, ``inputs`` replacing some of them."""
    d = ref.data
    args = dict(weights=d.weights, query=d.query, key=d.key, value=d.value, mask=d.mask,
                bias=d.bias)
    args.update(inputs)
    trace = steps(spec or d.case.spec).forward(**args)
    return Prediction(trace.out, trace.rows_with_keys)


def _run_grads(ref, steps: type) -> Prediction:
    d = ref.data
    trace, grads = steps(d.case.spec).vjp(d.weights, d.query, d.key, d.value, ref.d_out,
                                          d.mask, d.bias)
    return Prediction(trace.out, None, fold_input_grads(grads, d.case.form))


def _spec(ref):
    return ref.data.case.spec


def _lengths(ref) -> tuple[int, int]:
    return ref.data.query.shape[1], ref.data.key.shape[1]


# --- Masks and the structural rules ----------------------------------------------------

@_hypothesis("mask_inverted", "the mask's polarity is inverted: keys marked True (attend) are "
             "dropped and keys marked False are attended")
def _(ref, actual):
    return None if ref.data.mask is None else _run(ref, mask=~ref.data.mask)


@_hypothesis("mask_ignored", "the user's mask is ignored (the causal and window rules still apply)")
def _(ref, actual):
    return None if ref.data.mask is None else _run(ref, mask=None)


@_hypothesis("causal_top_left", "the causal rule is aligned top-left (key j <= i) where the spec "
             "asks bottom-right (j <= i + L_k - L_q)")
def _(ref, actual):
    s = _spec(ref)
    return _run(ref, spec=s.replace(causal="top_left")) if s.causal == "bottom_right" else None


@_hypothesis("causal_bottom_right", "the causal rule is aligned bottom-right (j <= i + L_k - L_q) "
             "where the spec asks top-left (j <= i)")
def _(ref, actual):
    s = _spec(ref)
    return _run(ref, spec=s.replace(causal="bottom_right")) if s.causal == "top_left" else None


@_hypothesis("causal_added", "a causal rule (top-left) is applied though the spec asks for none")
def _(ref, actual):
    s = _spec(ref)
    return _run(ref, spec=s.replace(causal="top_left")) if s.causal is None else None


@_hypothesis("causal_dropped", "the causal rule the spec asks for is not applied")
def _(ref, actual):
    s = _spec(ref)
    return _run(ref, spec=s.replace(causal=None)) if s.causal is not None else None


def _window_edge(side: int, change: int):
    def predict(ref, actual):
        s = _spec(ref)
        if s.window is None or s.window[side] + change < 0:
            return None
        window = list(s.window)
        window[side] += change
        return _run(ref, spec=s.replace(window=tuple(window)))
    return predict


for _side, _name in enumerate(("left", "right")):
    _hypothesis(f"window_{_name}_one_short", f"the sliding window's {_name} edge is off by one: "
                f"it keeps one key too few (a > where >= belongs)")(_window_edge(_side, -1))
    _hypothesis(f"window_{_name}_one_long", f"the sliding window's {_name} edge is off by one: "
                f"it keeps one key too many")(_window_edge(_side, +1))


@_hypothesis("own_position_excluded", "each query is kept from attending to its own position "
             "(key j == i is masked)")
def _(ref, actual):
    L_q, L_k = _lengths(ref)
    not_self = np.arange(L_q)[:, None] != np.arange(L_k)[None, :]
    mask = not_self if ref.data.mask is None else ref.data.mask & not_self
    return _run(ref, mask=mask)


def _golden_minimum(f, lo: float, hi: float, steps: int = 60) -> float:
    """Golden-section search for the minimum of ``f`` on [lo, hi] (numpy has no minimiser,
    and one parameter does not warrant scipy)."""
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo + (1 - ratio) * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(steps):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - ratio) * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    return (lo + hi) / 2.0


def _fill_masked(fill: float) -> type:
    def softmax(self, logits, visible):
        return Steps.softmax(self, np.where(visible, logits, fill), np.ones_like(visible))
    return _variant(softmax=softmax)


def _shift_masked(shift: float) -> type:
    def softmax(self, logits, visible):
        return Steps.softmax(self, np.where(visible, logits, logits + shift), np.ones_like(visible))
    return _variant(softmax=softmax)


def _fitted(ref, actual, steps_for, what: str):
    """``steps_for(x)`` fitted to the implementation's output over x = −10^t, t in
    [−1, 5] (one parameter), then held to the gate's tolerance like any other variant."""
    s = _spec(ref)
    if ref.data.mask is None and s.causal is None and s.window is None:
        return None
    rows = ~ref.data.fully_masked[..., None]
    actual = np.asarray(actual, dtype=np.float64)
    if actual.shape != ref.out.shape or not np.isfinite(actual[rows[..., 0]]).all():
        return None

    def error(t):
        out = _run(ref, steps_for(-10.0 ** t)).out
        return float(np.max(np.abs(out - actual), where=rows, initial=0.0))

    grid = np.arange(-1.0, 5.01, 0.1)
    best = int(np.argmin([error(t) for t in grid]))
    x = -10.0 ** _golden_minimum(error, grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)])
    return dataclasses.replace(_run(ref, steps_for(x)), note=f"{what} fitted: {x:.4g}")


@_hypothesis("mask_fill_finite", "masked scores are filled with a finite value instead of −inf, "
             "so masked keys keep a small weight (a leak)")
def _(ref, actual):
    return _fitted(ref, actual, _fill_masked, "fill")


@_hypothesis("mask_additive_finite", "the mask is added as a finite penalty (score − c) instead "
             "of −inf, so masked keys keep a small weight (a leak)")
def _(ref, actual):
    return _fitted(ref, actual, _shift_masked, "penalty")


# --- The logit scale and the softcap ----------------------------------------------------

def _scale(ref, scale: float):
    s = _spec(ref)
    return None if math.isclose(scale, s.logit_scale, rel_tol=1e-15) else _run(ref, spec=s.replace(scale=scale))


@_hypothesis("scale_sqrt_d_model", "the scores are scaled by 1/sqrt(d_model) instead of "
             "1/sqrt(head size)")
def _(ref, actual):
    return _scale(ref, 1.0 / math.sqrt(_spec(ref).E))


@_hypothesis("scale_d_k", "the scores are scaled by 1/d_k instead of 1/sqrt(d_k)")
def _(ref, actual):
    return _scale(ref, 1.0 / _spec(ref).d_k)


@_hypothesis("scale_missing", "the scores are not scaled at all")
def _(ref, actual):
    return _scale(ref, 1.0)


@_hypothesis("custom_scale_ignored", "the spec's custom scale is ignored: the default "
             "1/sqrt(d_k) is used")
def _(ref, actual):
    s = _spec(ref)
    return None if s.scale is None else _run(ref, spec=s.replace(scale=None))


@_hypothesis("scale_rounded_float32", "the scale is rounded through float32 (a float32 constant "
             "in a float64 computation)")
def _(ref, actual):
    if ref.data.case.dtype != "float64":
        return None
    return _scale(ref, float(np.float32(_spec(ref).logit_scale)))


@_hypothesis("softcap_missing", "the spec's softcap is not applied")
def _(ref, actual):
    s = _spec(ref)
    return None if s.softcap is None else _run(ref, spec=s.replace(softcap=None))


def _softcap_last_logits(self, q, k, bias, visible):
    s = self.scores(q, k)
    s = s if bias is None else s + bias
    return self.softcap(np.where(visible, s, -np.inf))[0], None


_SoftcapLast = _variant(logits=_softcap_last_logits,
                        softmax=lambda self, logits, visible: Steps.softmax(
                            self, logits, np.ones_like(visible)))


@_hypothesis("softcap_after_bias_and_mask", "the softcap is applied after the bias and the mask: "
             "the bias is capped too, and masked keys come back at −c")
def _(ref, actual):
    return None if _spec(ref).softcap is None else _run(ref, _SoftcapLast)


# --- Heads and projections -------------------------------------------------------------

@_hypothesis("gqa_heads_tiled", "grouped key/value heads are tiled (query head h reads kv head "
             "h % H_kv) instead of repeated (h // group size)")
def _(ref, actual):
    s = _spec(ref)
    if s.H_kv in (1, s.H):
        return None
    return _run(ref, _variant(expand_kv=lambda self, x: np.tile(x, (1, self.spec.group_size, 1, 1))))


@_hypothesis("kv_head_zero_only", "every query head reads the first key/value head")
def _(ref, actual):
    if _spec(ref).H_kv == 1:
        return None
    return _run(ref, _variant(expand_kv=lambda self, x: np.repeat(x[:, :1], self.spec.H, axis=1)))


@_hypothesis("heads_merged_without_transpose", "heads are merged by reshaping (B, H, L, d) to "
             "(B, L, H·d) without moving H back next to d")
def _(ref, actual):
    if _spec(ref).H == 1 or ref.data.query.shape[1] == 1:
        return None

    def merge_heads(self, x):
        B, H, L, d = x.shape
        return x.reshape(B, L, H * d)
    return _run(ref, _variant(merge_heads=merge_heads))


def _split_interleaved(self, x, heads):
    B, L, width = x.shape
    return x.reshape(B, L, width // heads, heads).transpose(0, 3, 1, 2)


def _merge_interleaved(self, x):
    B, H, L, d = x.shape
    return x.transpose(0, 2, 3, 1).reshape(B, L, d * H)


@_hypothesis("heads_split_interleaved", "heads are split and merged as (d, H) instead of (H, d): "
             "each head takes every H-th feature")
def _(ref, actual):
    if _spec(ref).H == 1:
        return None
    return _run(ref, _variant(split_heads=_split_interleaved, merge_heads=_merge_interleaved))


@_hypothesis("key_value_swapped", "key and value are swapped")
def _(ref, actual):
    d = ref.data
    if d.case.form != "qkv" or d.key.shape != d.value.shape or _spec(ref).d_k != _spec(ref).d_v:
        return None
    return _run(ref, key=d.value, value=d.key)


def _weights_changed(name: str, change):
    def predict(ref, actual):
        w = ref.data.weights
        if name not in w:
            return None
        changed = change(w[name])
        if changed is None:
            return None
        return _run(ref, weights={**w, name: changed})
    return predict


for _name in ("wq", "wk", "wv", "wo"):
    _hypothesis(f"{_name}_transposed", f"the weight {_name} is used transposed (a (out, in) "
                f"layout read as (in, out))")(
        _weights_changed(_name, lambda w: w.T if w.shape[0] == w.shape[1] else None))
# bk cannot show: the softmax cancels a bias shared by every key.
for _name, _what in (("bo", "output"), ("bq", "query"), ("bv", "value")):
    _hypothesis(f"{_name}_dropped", f"the {_what} projection's bias {_name} is dropped")(
        _weights_changed(_name, lambda b: None if not b.any() else np.zeros_like(b)))


@_hypothesis("output_p_times_v_transposed", "the output is written as P·Vᵀ instead of P·V")
def _(ref, actual):
    if ref.data.key.shape[1] != _spec(ref).d_v:
        return None
    return _run(ref, _variant(combine=lambda self, p, v: p @ v.transpose(0, 1, 3, 2)))


# --- The softmax ---------------------------------------------------------------------

def _softmax_over_queries(self, logits, visible):
    return Steps.softmax(self, logits.swapaxes(-1, -2), visible.swapaxes(-1, -2)).swapaxes(-1, -2)


@_hypothesis("softmax_wrong_axis", "the softmax is taken over the queries (axis −2) instead of "
             "the keys")
def _(ref, actual):
    return _run(ref, _variant(softmax=_softmax_over_queries))


_EXP_LIMIT = {"float64": np.finfo(np.float64).max}   # half precision softmaxes run in float32


def _softmax_unshifted(self, logits, visible):
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(np.where(visible, logits, -np.inf))
        e[e > _EXP_LIMIT.get(self.dtype, np.finfo(np.float32).max)] = np.inf
        total = e.sum(axis=-1, keepdims=True)
        return e / np.where(total > 0, total, 1.0)


@_hypothesis("softmax_without_max_subtraction", "the softmax does not subtract the row max: "
             "exp overflows to inf and the weights to NaN on large scores")
def _(ref, actual):
    steps = _variant(softmax=_softmax_unshifted, dtype=ref.data.case.dtype)
    return _run(ref, steps)


def _softmax_empty_rows(fill: float) -> type:
    def softmax(self, logits, visible):
        probs = Steps.softmax(self, logits, visible)
        empty = ~visible.any(axis=-1)
        probs[empty] = fill if not math.isnan(fill) else np.nan
        return probs
    return _variant(softmax=softmax)


@_hypothesis("fully_masked_uniform", "a row with no visible key gets uniform weights (the mean "
             "of every value) instead of zeros")
def _(ref, actual):
    if not ref.data.fully_masked.any():
        return None
    prediction = _run(ref, _softmax_empty_rows(1.0 / ref.data.key.shape[1]))
    return dataclasses.replace(prediction, rows=np.ones_like(prediction.rows))


@_hypothesis("fully_masked_nan", "a row with no visible key gives NaN instead of zeros")
def _(ref, actual):
    if not ref.data.fully_masked.any():
        return None
    prediction = _run(ref, _softmax_empty_rows(math.nan))
    return dataclasses.replace(prediction, rows=np.ones_like(prediction.rows))


# --- Rotary positions (SPEC 2) -------------------------------------------------------

def _rope(ref, **changes):
    """The case's spec with its RoPE changed (None where the spec has no RoPE)."""
    s = _spec(ref)
    return None if s.rope is None else s.replace(rope=dataclasses.replace(s.rope, **changes))


@_hypothesis("rope_style_swapped", "RoPE rotates the wrong feature pairs: interleaved (2m, 2m+1) "
             "where the spec asks half (m, m + r/2), or the reverse (a checkpoint's wq/wk not "
             "permuted)")
def _(ref, actual):
    spec = _rope(ref)
    if spec is None or spec.rotary_dim == 2:     # one pair: both layouts rotate it alike
        return None
    return _run(ref, spec=_rope(ref, style="half" if spec.rope.style == "interleaved" else "interleaved"))


@_hypothesis("rope_not_applied", "the spec's rotary positions are not applied to the queries "
             "and keys")
def _(ref, actual):
    s = _spec(ref)
    return None if s.rope is None else _run(ref, spec=s.replace(rope=None))


@_hypothesis("rope_partial_ignored", "RoPE rotates the whole head where the spec rotates only its "
             "first rotary_dim features")
def _(ref, actual):
    s = _spec(ref)
    return None if s.rope is None or s.rotary_dim == s.d_k else _run(ref, spec=_rope(ref, rotary_dim=None))


def _positions_shifted(q_shift: int, k_shift: int) -> type:
    def positions(self, L_q, L_k):
        q_positions, k_positions = Steps.positions(self, L_q, L_k)
        return q_positions + q_shift, k_positions + k_shift
    return _variant(positions=positions)


def _nearest(actual, predictions: dict):
    """The prediction nearest ``actual`` (the first one where that cannot be told)."""
    def err(p):
        a = np.asarray(actual, dtype=np.float64) if actual is not None else None
        if a is None or a.shape != p.out.shape or not np.isfinite(a).all():
            return 0.0
        return float(np.max(np.abs(p.out - a), initial=0.0))
    note, best = min(predictions.items(), key=lambda item: err(item[1]))
    return dataclasses.replace(best, note=note)


@_hypothesis("rope_positions_off_by_one", "RoPE positions are off by one between queries and keys "
             "(one of them counted from 1): every relative position is shifted by one")
def _(ref, actual):
    if _spec(ref).rope is None:
        return None
    # Only the relative position reaches the scores: shifting both would change nothing.
    return _nearest(actual, {"queries one position ahead": _run(ref, _positions_shifted(1, 0)),
                             "keys one position ahead": _run(ref, _positions_shifted(0, 1))})


@_hypothesis("rope_queries_not_end_aligned", "RoPE puts the queries at positions 0..L_q−1 where "
             "they are the last L_q of the L_k tokens (positions L_k−L_q..L_k−1)")
def _(ref, actual):
    L_q, L_k = _lengths(ref)
    if _spec(ref).rope is None or L_q == L_k:
        return None
    return _run(ref, _positions_shifted(-(L_k - L_q), 0))


def _angles_in(precision: str):
    r = oracle.rounding(precision)

    def angles(self, positions):
        s = self.spec
        frequencies = r(s.rope.theta ** (-2.0 * np.arange(s.rotary_dim // 2) / s.rotary_dim))
        return r(r(np.asarray(positions, dtype=np.float64))[:, None] * frequencies[None, :])
    steps = _variant(angles=angles)

    def predict(ref, actual):
        return None if _spec(ref).rope is None else _run(ref, steps)
    return predict


for _precision in ("float16", "bfloat16"):
    _hypothesis(f"rope_angles_{_precision}", f"the RoPE frequencies and angles (position times "
                f"frequency) are computed in {_precision}: far positions get wrong angles")(
        _angles_in(_precision))


# --- Decoding with a cache (the decode check) --------------------------------------------

def _decodable(ref) -> bool:
    d = ref.data
    return (d.case.spec.causal is not None and d.query.shape[1] == d.key.shape[1]
            and d.mask is None and d.bias is None)


def _decoded_step(ref, start: int, stop: int, first: int = 0, steps: type = Steps, spec=None,
                  query_offset: bool = True) -> np.ndarray:
    """A decoder's output for the tokens [start, stop): its queries attend to the cached keys
    [first, stop), rotated at their positions start.. (or at 0..: ``query_offset`` False),
    with ``steps``'s computation."""
    d = ref.data
    decoding = (spec or d.case.spec).replace(causal="bottom_right")   # new queries come last
    at = (np.arange(start, stop) if query_offset else np.arange(stop - start), np.arange(first, stop))
    layer = type("Decoding", (steps,), {"positions": lambda self, L_q, L_k: at})
    return layer(decoding).forward(d.weights, d.query[:, start:stop], d.key[:, first:stop],
                                   d.value[:, first:stop]).out


def _decoded(ref, first_key=lambda start, stop: 0, **step) -> Prediction:
    """The steps of the decode check's schedule (decode.decode_chunks), stitched into
    (B, L, E_o); step [start, stop) keeps the keys from first_key(start, stop) on."""
    return Prediction(np.concatenate([_decoded_step(ref, start, stop, first_key(start, stop), **step)
                                      for start, stop in decode_chunks(ref.data.query.shape[1])], axis=1))


@_hypothesis("decode_positions_not_offset", "while decoding, the new queries are rotated at "
             "positions 0..n−1 instead of after the cached tokens", "decode")
def _(ref, actual):
    return _decoded(ref, query_offset=False) if _decodable(ref) and _spec(ref).rope else None


@_hypothesis("decode_cache_dropped", "the decoding cache is not kept: each step attends to its "
             "own tokens only", "decode")
def _(ref, actual):
    return _decoded(ref, first_key=lambda start, stop: start) if _decodable(ref) else None


@_hypothesis("decode_cache_drops_oldest", "the decoding cache loses its oldest entries (a fixed "
             "number of slots, or an entry evicted per step)", "decode")
def _(ref, actual):
    """Fitted: each step's first kept key, the one whose output is nearest the decoder's
    (without an output: a cache one slot too small)."""
    if not _decodable(ref):
        return None
    L = ref.data.query.shape[1]
    chunks = decode_chunks(L)
    actual = None if actual is None else np.asarray(actual, dtype=np.float64)
    if actual is None or actual.shape != ref.out.shape or not np.isfinite(actual).all():
        firsts = [max(0, stop - (L - 1)) for _, stop in chunks]
    else:
        firsts = [min(range(start + 1), key=lambda first: float(np.max(np.abs(
            _decoded_step(ref, start, stop, first) - actual[:, start:stop]))))
            for start, stop in chunks]
    kept = dict(zip((start for start, _ in chunks), firsts))
    prediction = _decoded(ref, first_key=lambda start, stop: kept[start])
    return dataclasses.replace(prediction, note="first key kept at each step fitted: "
                               + ", ".join(map(str, firsts)))


@_hypothesis("decode_window_ignored", "the sliding window is not applied while decoding (the "
             "full pass applies it)", "decode")
def _(ref, actual):
    s = _spec(ref)
    return _decoded(ref, spec=s.replace(window=None)) if _decodable(ref) and s.window else None


# --- Precision -------------------------------------------------------------------------

def _rounded(precision: str, dtypes: tuple[str, ...]):
    def predict(ref, actual):
        d = ref.data
        if d.case.dtype not in dtypes:
            return None
        return Prediction(oracle.forward(d.case.spec, d.weights, d.query, d.key, d.value, d.mask,
                                         d.bias, precision=precision))
    return predict


_hypothesis("float32_in_float64", "part of the work is done in float32 inside a float64 run",
            "precision")(_rounded("float32", ("float64",)))
_hypothesis("float16_accumulation", "part of the work is done (or accumulated) in float16",
            "precision")(_rounded("float16", ("float32", "float64")))
_hypothesis("bfloat16_accumulation", "part of the work is done (or accumulated) in bfloat16",
            "precision")(_rounded("bfloat16", ("float32", "float64")))


# --- Gradients only ------------------------------------------------------------------

def _gradient(condition, **methods):
    steps = _variant(**methods)

    def predict(ref, actual):
        return _run_grads(ref, steps) if condition(_spec(ref)) else None
    return predict


_hypothesis("grad_scale_forgotten", "the backward of scale·QKᵀ leaves out the scale: dQ and dK "
            "are 1/scale times too large", "gradient")(
    _gradient(lambda s: s.logit_scale != 1.0, scale_backward=lambda self: 1.0))
_hypothesis("softmax_detached", "no gradient flows through the softmax to the queries and keys "
            "(the weights are detached)", "gradient")(
    _gradient(lambda s: True, softmax_backward=lambda self, d, p: np.zeros_like(p)))
_hypothesis("softmax_grad_diagonal_only", "the softmax backward keeps only p(1 − p), without the "
            "−p_i·p_j terms", "gradient")(
    _gradient(lambda s: True, softmax_backward=lambda self, d, p: d * p * (1.0 - p)))
_hypothesis("softcap_grad_missing_square", "the softcap backward multiplies by 1 − tanh "
            "instead of 1 − tanh²", "gradient")(
    _gradient(lambda s: s.softcap is not None,
              softcap_backward=lambda self, d, t: d * (1.0 - t)))


# --- Evidence from the checks themselves -----------------------------------------------

@_hypothesis("fully_masked_nan_gradients", "rows with no visible key make every gradient NaN "
             "(an additive −inf mask, the NaN only zeroed after the softmax)", "evidence")
def _(results, fresh_call_matches):
    output_ok = all(r.status == "pass" for r in results if r.check == "output")
    grads = [r for r in results if r.check.startswith("grad.") and r.status == "fail"]
    return (output_ok and bool(grads) and "fully_masked" in results[0].tags
            and all(r.detail.get("problem") == "non-finite" for r in grads))


@_hypothesis("state_between_calls", "the layer keeps state between calls (a cache keyed on "
             "shapes, or one never reset)", "evidence")
def _(results, fresh_call_matches):
    """A stateless check that fails while a fresh layer's first call is right (a layer
    wrong on every call fails it too). Two calls that differ are no evidence of state:
    nondeterministic kernels differ too."""
    failed = {r.check for r in results if r.status == "fail"}
    return "stateless" in failed and bool(fresh_call_matches)



@_hypothesis("decode_cache_kept_across_sequences", "the decoding cache is not reset: a new "
             "sequence's fresh cache still holds the last sequence's entries", "evidence")
def _(results, fresh_call_matches):
    """A decode check that fails while the first sequence decodes right (the check's second
    sequence starts a fresh cache)."""
    failed = {r.check for r in results if r.status == "fail"}
    return "decode" in failed and bool(fresh_call_matches)

BY_ID = {h.id: h for h in HYPOTHESES}
assert len(BY_ID) == len(HYPOTHESES), "hypothesis ids must be unique"
assert all(h.kind in KINDS for h in HYPOTHESES)
