"""Diagnosis: for a failing implementation, which known mistake explains its results.

Runs in the process that judged the implementation (the worker), after its cases, and
only for an implementation with failing checks: on each failing case (up to ``MAX_CASES``,
within ``BUDGET_SECONDS``), every hypothesis of ``conformance/hypotheses.py`` is held to
the outputs the implementation gave when judged (kept by the worker; a stateless case is
run again) by the gate's own tolerance rule.
What goes back to the parent is a small JSON list, best first:

    {"id", "explanation", "match", "checks", "cases_explained", "cases_failing",
     "max_err", "worst_ratio", "note", "cases"}

``match`` is "exact" (within the gate's bound of the mistaken computation),
"magnitude" (the error has the size of a lower precision's rounding) or "evidence"
(read from the checks). An empty list means no hypothesis explains any failing case:
the verdict then says so, and never names a guess.

What a case's failure is, decides what is matched: a failing output is matched by the
"output" and "precision" hypotheses; failing gradients under a passing output by the
"gradient" ones (and the verdict names the gradients that disagree); a failing decode
check by the "decode" ones and by the "output" and "precision" ones, held to every step's
output of both sequences the check decodes, stitched (the decoding is run again);
"evidence" hypotheses read the checks. Cases that raised are not diagnosed: their message
says why.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from attnsuite.conformance import tolerance
from attnsuite.conformance.cases import NUMERIC
from attnsuite.conformance.checks import FAILING, reference
from attnsuite.conformance.decode import run_decode
from attnsuite.conformance.hypotheses import HYPOTHESES, Hypothesis
from attnsuite.impls.calling import make_fn
from attnsuite.impls import oracle

BUDGET_SECONDS = 60.0    # per implementation
MAX_CASES = 8            # failing cases examined per implementation
SHOWN = 3                # hypotheses shown after the top one's line
# A precision hypothesis explains an error between 1/MAGNITUDE_BELOW and MAGNITUDE_ABOVE
# times the error of the whole computation rounded to that precision.
MAGNITUDE_BELOW, MAGNITUDE_ABOVE = 30.0, 3.0
_KIND_RANK = {"output": 0, "gradient": 0, "decode": 0, "evidence": 1, "precision": 2}
NONE_EXPLAINS = "no hypothesis explains this"
FAILED = "diagnosis_failed"     # the id of the one entry a diagnosis that raised sends back


# ---------------------------------------------------------------------------------------
# Choosing the cases and running the implementation on them again.

def _signal(results) -> str | None:
    """What failed in one case: "output", "gradient", "stateless" (whose calls are plain
    forward calls), "decode", "behaviour", or None (only errors)."""
    failing = {r.check for r in results if r.status == "fail"}
    if "output" in failing:
        return "output"
    if any(c.startswith("grad.") for c in failing):
        return "gradient"
    if "stateless" in failing:
        return "stateless"
    if "decode" in failing:
        return "decode"
    return "behaviour" if failing else None


def _examined(cases, by_case: dict) -> list:
    """The failing cases to examine: each next one the case that adds the most features
    (tags) not yet examined, so that failures of different causes are all looked at; on a
    tie float64 and float32 first (the exact rules), then the smallest."""
    failing = [c for c in cases if _signal(by_case.get(c.id, [])) is not None]
    order = {"float64": 0, "float32": 1}
    failing.sort(key=lambda c: (order.get(c.dtype, 2), c.B * c.L_q * c.L_k * c.spec.E))
    chosen, seen = [], set()
    while failing and len(chosen) < MAX_CASES:
        best = max(failing, key=lambda c: len(set(c.tags) - seen))   # the first of the best
        failing.remove(best)
        chosen.append(best)
        seen |= set(best.tags)
    return chosen


def _rerun(subject, case, ref, signal: str, device: str):
    """The implementation's (out, grads or None) on the case's inputs, from a fresh fn."""
    d = ref.data
    fn = make_fn(subject.factory, case.spec, form=case.form, dtype=case.dtype, device=device)
    args = (fn, d.weights, d.query, d.key, d.value)
    kwargs = dict(mask=d.mask, bias=d.bias, dtype=case.dtype, device=device, form=case.form)
    if signal == "gradient":
        out, grads = subject.backend.forward_and_vjp(*args, ref.d_out, **kwargs)
        return np.asarray(out, dtype=np.float64), grads
    return np.asarray(subject.backend.forward(*args, **kwargs), dtype=np.float64), None


def _redecode(subject, case, refs, device: str) -> list:
    """Each sequence's decoded steps, stitched into (B, L, E_o), as the decode check feeds
    them: one fresh fn, the sequences in turn."""
    fn = make_fn(subject.factory, case.spec, form=case.form, dtype=case.dtype, device=device)
    return [np.concatenate([out for _, out in run_decode(subject.backend, fn, ref.data, case.dtype, device)],
                           axis=1) for ref in refs]


# ---------------------------------------------------------------------------------------
# Holding a result to one hypothesis.

def _baseline(ref, predicted, name=None):
    """For float16/bfloat16: the prediction shifted by the oracle's own rounding error,
    so that the gate's baseline rule measures the same budget around it."""
    if ref.base_out is None:
        return None
    if name is None:
        return predicted + (ref.base_out - ref.out)
    return predicted + (ref.base_grads[name] - ref.grads[name])


def _same_nonfinite(a, b):
    return (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))


def _exact(actual, predicted, ref, rows, **rule) -> tolerance.Comparison:
    if actual.shape != predicted.shape:
        return tolerance.compare(actual, predicted, ref.data.case.dtype, **rule)
    valid = ~_same_nonfinite(actual, predicted)
    if rows is not None:
        valid &= np.broadcast_to(rows[..., None], actual.shape) if rows.ndim == 2 else rows
    return tolerance.compare(actual, predicted, ref.data.case.dtype, valid=valid, **rule)


def _gate_rows(ref, strict: bool):
    return None if strict else ~ref.data.fully_masked


def _and_rows(a, b):
    return b if a is None else (a if b is None else a & b)


def _match_output(h: Hypothesis, ref, actual, strict: bool, float32_err: float | None):
    """(explained, ratio, max_err, note) or None when the mistake cannot show here.

    ``float32_err``, in a float64 case: how far float32 rounding moves the oracle. A
    layer that makes the mistake *and* computes in float32 matches the mistake up to that
    much, where the mistake itself moves the output far more."""
    prediction = h.predict(ref, actual)
    if prediction is None or actual.shape != prediction.out.shape:
        return None
    rows = _and_rows(_gate_rows(ref, strict), prediction.rows)
    if h.kind == "precision":
        return _magnitude(actual, prediction.out, ref, rows)
    shows = _exact(prediction.out, ref.out, ref, rows, baseline=_baseline(ref, ref.out))
    if shows.ok:    # the mistake changes nothing the gate can see in this case
        return None
    c = _exact(actual, prediction.out, ref, rows, baseline=_baseline(ref, prediction.out))
    err = c.abs_err if c.abs_err is not None else math.inf
    if c.ok or not float32_err:
        return c.ok, c.ratio, err, prediction.note
    valid = np.ones(actual.shape, bool) if rows is None else np.broadcast_to(rows[..., None], actual.shape)
    shown = float(np.max(np.abs(prediction.out - ref.out), where=valid, initial=0.0))
    off = float(np.max(np.abs(actual - prediction.out), where=valid, initial=0.0))
    if shown > MAGNITUDE_BELOW * float32_err and off <= MAGNITUDE_ABOVE * float32_err:
        note = "; ".join(filter(None, [prediction.note, "float64 only up to float32 rounding"]))
        return True, 1.0 + off / (MAGNITUDE_ABOVE * float32_err), off, note
    return False, c.ratio, err, prediction.note


def _match_decode(h: Hypothesis, decoded, strict: bool, float32_errs):
    """_match_output over the sequences of a decode check ((ref, stitched steps) each): the
    mistake must show in one, and the decoder match it in every one (in a sequence where it
    does not show, match the oracle)."""
    found = []
    for (ref, actual), float32_err in zip(decoded, float32_errs):
        held = _match_output(h, ref, actual, strict, float32_err)
        if held is None:
            if not _exact(actual, ref.out, ref, _gate_rows(ref, strict), baseline=_baseline(ref, ref.out)).ok:
                return False, math.inf, math.inf, ""
            continue
        found.append(held)
    if not found:
        return None
    notes = "; ".join(dict.fromkeys(note for *_, note in found if note))
    return (all(ok for ok, *_ in found), max(ratio for _, ratio, _, _ in found),
            max(err for _, _, err, _ in found), notes)


def _magnitude(actual, rounded, ref, rows):
    """Its ratio is how many times the error is off that rounding's, either way (>= 1)."""
    valid = np.ones(actual.shape, bool) if rows is None else np.broadcast_to(rows[..., None], actual.shape)
    if not np.isfinite(actual[valid]).all():
        return None
    err = float(np.max(np.abs(actual - ref.out), where=valid, initial=0.0))
    expected_err = float(np.max(np.abs(rounded - ref.out), where=valid, initial=0.0))
    if expected_err == 0 or err == 0:
        return None
    explained = expected_err / MAGNITUDE_BELOW <= err <= MAGNITUDE_ABOVE * expected_err
    return explained, max(err / expected_err, expected_err / err), err, ""


def _match_grads(h: Hypothesis, ref, actual_grads):
    prediction = h.predict(ref, None)
    if prediction is None:
        return None
    scale = tolerance.gradient_scale(prediction.grads)
    worst, err, differs = 0.0, 0.0, False
    for name, predicted in prediction.grads.items():
        if name not in actual_grads:
            return False, math.inf, math.inf, ""
        actual = np.asarray(actual_grads[name], dtype=np.float64)
        differs |= not _exact(predicted, ref.grads[name], ref, None, gradient=True,
                              scale_floor=scale, absolute=name in tolerance.ZERO_IN_THE_MATH,
                              baseline=_baseline(ref, ref.grads[name], name)).ok
        c = _exact(actual, predicted, ref, None, gradient=True, scale_floor=scale,
                   absolute=name in tolerance.ZERO_IN_THE_MATH, baseline=_baseline(ref, predicted, name))
        worst = max(worst, c.ratio)
        err = max(err, c.abs_err if c.abs_err is not None else (0.0 if c.ok else math.inf))
    if not differs:
        return None
    return worst <= 1.0, worst, err, ""


def _float32_err(ref, strict: bool) -> float:
    d = ref.data
    rounded = oracle.forward(d.case.spec, d.weights, d.query, d.key, d.value, d.mask, d.bias,
                             precision="float32")
    rows = _gate_rows(ref, strict)
    valid = np.ones(rounded.shape, bool) if rows is None else np.broadcast_to(rows[..., None], rounded.shape)
    return float(np.max(np.abs(rounded - ref.out), where=valid, initial=0.0))


# ---------------------------------------------------------------------------------------
# The diagnosis of one implementation.

class _Tally:
    def __init__(self, h: Hypothesis, index: int):
        self.h, self.index = h, index
        self.cases, self.ratio, self.max_err, self.checks, self.notes = [], 0.0, 0.0, set(), []

    @property
    def explained(self) -> int:
        return len(self.cases)

    def add(self, case_id, explained, ratio, err, note, checks):
        if not explained:
            return
        self.cases.append(case_id)
        self.ratio, self.max_err = max(self.ratio, ratio), max(self.max_err, err)
        self.checks |= set(checks)
        if note and note not in self.notes:
            self.notes.append(note)

    def key(self):
        return (-self.explained, _KIND_RANK[self.h.kind], self.ratio, self.index)

    def to_dict(self, examined: int) -> dict:
        match = {"precision": "magnitude", "evidence": "evidence"}.get(self.h.kind, "exact")
        return {"id": self.h.id, "explanation": self.h.explanation, "match": match,
                "checks": sorted(self.checks), "cases_explained": self.explained,
                "cases_failing": examined, "max_err": _finite(self.max_err),
                "worst_ratio": _finite(self.ratio), "note": "; ".join(self.notes[:2]),
                "cases": self.cases}


def _finite(x: float):
    return float(f"{x:.3g}") if math.isfinite(x) else None


@dataclasses.dataclass
class _Observed:
    """One failing case as the diagnosis sees it."""
    signal: str | None                # what failed: see _signal (None: nothing to match)
    ref: object = None                # the oracle's Reference on the case's inputs
    out: np.ndarray | None = None
    grads: dict | None = None
    fresh_call_matches: bool | None = None   # a stateless case: a fresh fn's first call is right
                                             # (a decode case: the first sequence decodes right)
    decoded: list | None = None       # a decode case: (Reference, stitched steps) per sequence


def _observe(subject, case, case_results, kept: dict, *, device, strict, weights) -> _Observed:
    signal = _signal(case_results)
    if signal == "behaviour":
        return _Observed(signal)
    case_weights = weights[1] if weights is not None and case.spec == weights[0] else None
    # A behaviour case's inputs are its numeric twin's (materialize ignores the checks).
    ref = reference(case.replace(checks=NUMERIC), case_weights, strict)
    if signal == "decode":
        return _observe_decode(subject, case, ref, device, strict)
    try:
        out, grads = kept[case.id] if case.id in kept else _rerun(subject, case, ref, signal, device)
    except Exception:   # Unsupported too: nothing to match
        return _Observed(None, ref)
    seen = _Observed(signal, ref, np.asarray(out, dtype=np.float64), grads)
    if signal == "gradient" and grads is None:
        seen.signal = None
    if signal == "stateless":
        seen.fresh_call_matches = _exact(seen.out, ref.out, ref, _gate_rows(ref, strict),
                                         baseline=_baseline(ref, ref.out)).ok
        seen.signal = None if seen.fresh_call_matches else "output"
    return seen


def _observe_decode(subject, case, ref, device, strict) -> _Observed:
    """Both sequences the decode check feeds (conformance/decode.py), decoded again."""
    second = reference(case.replace(seed=(case.seed + 1) % 2 ** 32, checks=NUMERIC), None, strict)
    try:
        outputs = _redecode(subject, case, [ref, second], device)
    except Exception:
        return _Observed(None, ref)
    decoded = list(zip([ref, second], outputs))
    first_right = _exact(outputs[0], ref.out, ref, _gate_rows(ref, strict),
                         baseline=_baseline(ref, ref.out)).ok
    return _Observed("decode", ref, outputs[0], fresh_call_matches=first_right, decoded=decoded)


def _weigh(tallies, case, case_results, seen: _Observed, strict: bool) -> None:
    """Hold every hypothesis to one observed case, adding what each explains to its tally."""
    failing = [r.check for r in case_results if r.status == "fail"]
    for t in tallies:
        if t.h.kind == "evidence":
            t.add(case.id, t.h.predict(case_results, seen.fresh_call_matches), 1.0, 0.0, "", failing)
    if seen.signal == "decode":
        _weigh_decode(tallies, case, seen, strict)
        return
    if seen.signal not in ("output", "gradient"):
        return
    float32_err = _float32_err(seen.ref, strict) if seen.signal == "output" and \
        case.dtype == "float64" else None
    # The checks a match speaks for: the output (or the stateless calls), or the gradients.
    matched = [c for c in failing if c.startswith("grad.")] if seen.signal == "gradient" else \
        [c for c in failing if c in ("output", "stateless")]
    kinds = ("output", "precision") if seen.signal == "output" else ("gradient",)
    for t in (t for t in tallies if t.h.kind in kinds):
        with np.errstate(all="ignore"):     # a mistake may overflow: that is its signature
            found = _match_output(t.h, seen.ref, seen.out, strict, float32_err) \
                if seen.signal == "output" else _match_grads(t.h, seen.ref, seen.grads)
        if found is not None:
            t.add(case.id, *found, matched)


def _weigh_decode(tallies, case, seen: _Observed, strict: bool) -> None:
    float32_errs = [_float32_err(ref, strict) if case.dtype == "float64" else None
                    for ref, _ in seen.decoded]
    for t in (t for t in tallies if t.h.kind in ("output", "precision", "decode")):
        with np.errstate(all="ignore"):
            found = _match_decode(t.h, seen.decoded, strict, float32_errs)
        if found is not None:
            t.add(case.id, *found, ["decode"])


def diagnose(subject, cases, results, *, device: str = "cpu", strict: bool = False,
             weights=None, outputs=None, budget: float | None = None) -> list[dict]:
    """The hypotheses that explain ``results`` (one implementation's CheckResults on
    ``cases``), best first; [] when none does. ``weights``: (spec, arrays) from --weights.
    ``outputs``: case id -> (out, grads or None) kept when judged; a case without them
    (a stateless case) is run again. ``budget``: seconds (BUDGET_SECONDS), checked between
    cases; the first case is always examined."""
    budget = BUDGET_SECONDS if budget is None else budget
    by_case: dict[str, list] = {}
    for r in results:
        by_case.setdefault(r.case_id, []).append(r)
    tallies = [_Tally(h, i) for i, h in enumerate(HYPOTHESES)]
    start, examined = time.monotonic(), 0
    for case in _examined(cases, by_case):
        if examined and time.monotonic() - start > budget:
            break
        examined += 1
        seen = _observe(subject, case, by_case[case.id], outputs or {}, device=device,
                        strict=strict, weights=weights)
        _weigh(tallies, case, by_case[case.id], seen, strict)
    ranked = sorted((t for t in tallies if t.explained), key=_Tally.key)
    return [t.to_dict(examined) for t in ranked]


# ---------------------------------------------------------------------------------------
# The verdict in words, for the terminal, the reports and JUnit.

def _evidence(d: dict) -> str:
    cases = f"{d['cases_explained']} of {d['cases_failing']} failing cases"
    checks = [c for c in d["checks"] if c.startswith("grad.")]
    if d["match"] == "magnitude":
        return (f"the output's error (max {d['max_err']:.2g}) has the size of that rounding on "
                f"{cases} (within a factor {d['worst_ratio']:.2g} of it)")
    if d["match"] == "evidence":
        return f"the checks show it on {cases} ({', '.join(d['checks'])})"
    near = f"max |err| {d['max_err']:.2g}" if d["max_err"] is not None else "non-finite"
    note = f"; {d['note']}" if d["note"] else ""
    if d["checks"] == ["decode"]:
        return f"every decoded step matches the oracle with that mistake on {cases} ({near}{note})"
    if "output" in d["checks"] or not checks:
        return f"the output matches the oracle with that mistake on {cases} ({near}{note})"
    return (f"the gradients match the oracle with that mistake on {cases} ({near}{note}); "
            f"the output passes, {', '.join(checks)} disagree")


def likely_cause(diagnosis: list[dict] | None, failing_cases: int | None = None) -> list[str]:
    """Lines for a failing implementation: 'Likely cause: ...' (none when not diagnosed)."""
    if diagnosis is None:
        return []
    if not diagnosis:
        return [f"Likely cause: {NONE_EXPLAINS}."]
    top = diagnosis[0]
    if top["id"] == FAILED:
        return [f"Likely cause: not diagnosed ({top['explanation']})."]
    partial = "" if top["cases_explained"] == top["cases_failing"] else " (partial)"
    examined = ""
    if failing_cases is not None and failing_cases > top["cases_failing"]:
        examined = f" [{top['cases_failing']} of {failing_cases} failing cases examined]"
    lines = [f"Likely cause{partial}: {top['id']}: {top['explanation']}; {_evidence(top)}{examined}"]
    covered, others = set(top.get("cases", ())), []
    for d in diagnosis[1:]:
        if set(d.get("cases", ())) - covered:     # a second cause, on cases the first leaves
            covered |= set(d["cases"])
            lines.append(f"  and on other cases: {d['id']}: {d['explanation']}; {_evidence(d)}")
        elif len(others) < SHOWN:
            others.append(f"{d['id']} ({d['cases_explained']}/{d['cases_failing']})")
    if others:
        lines.append("  also fits: " + ", ".join(others))
    return lines


def diagnosis_events(subjects, cases, judged, outputs, options, weights=None):
    """("diagnosis", i, [hypotheses]) for each loaded implementation with a failing or
    erroring check; nothing for the others (a passing run does no diagnosis work).
    ``cases[i]``: the cases implementation i was judged on (in its call form);
    ``outputs[i]``: case id -> (out, grads or None) the implementation gave when judged."""
    for i, subject in enumerate(subjects):
        if subject is None or not any(r.status in FAILING for r in judged[i]):
            continue
        try:
            found = diagnose(subject, cases[i], judged[i], device=options.device,
                             strict=options.strict_fully_masked, weights=weights,
                             outputs=outputs[i])
        except Exception as exc:  # a bug of the diagnosis must not cost the verdict
            found = [{"id": FAILED, "explanation": f"the diagnosis itself failed: "
                      f"{type(exc).__name__}: {exc}", "match": "none", "checks": [],
                      "cases_explained": 0, "cases_failing": 0, "max_err": None,
                      "worst_ratio": None, "note": ""}]
        yield ("diagnosis", i, found)


def cause_lines(impl) -> list[str]:
    """``likely_cause`` for an ImplResult: only where its verdict is "fail"."""
    if impl.verdict != "fail":
        return []
    failing_cases = len({r.case_id for r in impl.results if r.status == "fail"})
    return likely_cause(impl.diagnosis, failing_cases)
