"""The checks: one implementation on one case, judged against the float64 oracle.

``judge_case(subject, case, reference, options)`` returns one ``CheckResult`` per check:

- numeric cases: "output", then "grad.<name>" for query, key, value and every weight,
  and "fully_masked" where some query row sees no key;
- behaviour cases: "stateless" (a second call with new weights, inputs and lengths, then
  the first inputs again), "deterministic" (two calls, identical bits), "dropout"
  (training mode: the drop rate and the 1/(1-p) scaling), "contract" (the call itself:
  inputs and params left as they were, a tensor of the framework returned, of the
  inputs' dtype).

A query row with no visible key is left out of the ordinary comparison of the output (and
its cotangent zeroed), and what the implementation does there is classified into the
behaviour matrix: zeros (the spec's rule), uniform (the mean of every value),
unmasked (attention that ignores the mask), nan, or other. With ``strict_fully_masked``
those rows are compared like any other and a behaviour other than zeros fails. The
gradients are compared whole either way (the spec says no gradient flows back through
such a row, which the zeroed cotangent gives): NaN or Inf in any of them fails.

An exception raised by the implementation is reported with its whole message (capped at
``sanitize.MESSAGE_CHARS``), and its traceback is kept in the result's ``detail``.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import math
import traceback
from types import ModuleType
from typing import Callable

import numpy as np

from attnsuite import sanitize
from attnsuite.conformance import tolerance
from attnsuite.conformance.cases import NUMERIC, Case, CaseData
from attnsuite.conformance.coverage import DECLINED_BY_FACTORY, DECLINED_BY_FRAMEWORK
from attnsuite.conformance.decode import judge_decode
from attnsuite.impls import oracle
from attnsuite.impls.calling import FORM_INPUTS, FORMS, CallInputs, declares_decoding, fold_input_grads, make_fn
from attnsuite.impls.errors import Unsupported
from attnsuite.impls.weights import weight_shapes

STATUSES = ("pass", "fail", "error", "unsupported", "xfail", "xpass")
FAILING = ("fail", "error")             # the statuses that fail a verdict


@dataclasses.dataclass
class CheckResult:
    case_id: str
    check: str                      # "output", "grad.query", ..., "fully_masked", "stateless", ...
    status: str                     # one of STATUSES
    message: str
    tags: tuple[str, ...]
    ratio: float | None = None      # worst error / bound, for numeric checks
    detail: dict = dataclasses.field(default_factory=dict)  # worst element, behaviour, ...
    # Its share of the time its case took: a case's checks are judged together, so the runner
    # splits the case's time evenly among them (None until the case is done).
    seconds: float | None = None

    def to_dict(self) -> dict:
        # Not dataclasses.asdict: its deep copy of every detail was most of the time a
        # report of a few thousand checks took to write.
        return {**vars(self), "tags": list(self.tags)}

    @classmethod
    def from_dict(cls, data: dict) -> "CheckResult":
        return cls(**{**data, "tags": tuple(data["tags"])})


@dataclasses.dataclass(frozen=True)
class Subject:
    """An implementation ready to be judged: its name, factory, framework adapter, the
    call forms and the call-time inputs it takes (attnsuite.impls.calling)."""
    name: str
    factory: Callable
    backend: ModuleType
    forms: tuple[str, ...] = FORMS
    inputs: CallInputs = CallInputs()

    def case_for(self, case: Case, seed: int = 0) -> Case:
        """``case`` in a form this implementation takes. A three-tensor fn takes every call
        as it is (one tensor passed twice or three times is still three arguments); others
        get the case moved into a form they declare: "kv" keeps more of a three-tensor
        case's shapes (L_q != L_k) than "self" does, so it goes first."""
        if case.form in self.forms or "qkv" in self.forms:
            return case
        return case.in_form("kv" if "kv" in self.forms else "self", seed)


@dataclasses.dataclass(frozen=True)
class Options:
    device: str = "cpu"
    strict_fully_masked: bool = False
    weights_path: str | None = None
    seed: int = 0
    diagnose: bool = True           # name the likely bug of a failing implementation
    outputs_dir: str | None = None  # keep each numeric case's output there (judging.output_file)

    def reproduce(self, impl: str, case: Case) -> str:
        extra = [f"--device {self.device}"] if self.device != "cpu" else []
        extra += [f"--weights {self.weights_path}"] if self.weights_path else []
        extra += [f"--seed {self.seed}"] if self.seed else []
        extra += ["--strict-fully-masked"] if self.strict_fully_masked else []
        return " ".join([f"reproduce: attnsuite check {impl} --case {case.id}"] + extra)


# ---------------------------------------------------------------------------------------
# The oracle's side of a case, computed once and shared by every implementation.

@dataclasses.dataclass
class Reference:
    data: CaseData
    d_out: np.ndarray               # the cotangent handed to implementations
    out: np.ndarray | None = None
    grads: dict | None = None
    base_out: np.ndarray | None = None      # the plain float16/bfloat16 computation
    base_grads: dict | None = None


def reference(case: Case, weights: dict | None = None, strict_fully_masked: bool = False) -> Reference:
    data = case.materialize(weights)
    if case.checks != NUMERIC:
        return Reference(data, data.d_out)
    # Outside strict mode no gradient flows from rows without a visible key.
    d_out = data.d_out
    if not strict_fully_masked:
        d_out = np.where(data.fully_masked[..., None], 0.0, d_out)
    args = (case.spec, data.weights, data.query, data.key, data.value)
    ref = Reference(data, d_out)
    ref.grads = oracle.vjp(*args, d_out, data.mask, data.bias)
    ref.out = oracle.forward(*args, data.mask, data.bias)
    if case.dtype in tolerance.BASELINE_RULE:
        ref.base_out = oracle.forward(*args, data.mask, data.bias, precision=case.dtype)
        ref.base_grads = oracle.vjp(*args, d_out, data.mask, data.bias, precision=case.dtype)
    ref.grads = fold_input_grads(ref.grads, case.form)
    if ref.base_grads is not None:
        ref.base_grads = fold_input_grads(ref.base_grads, case.form)
    return ref


def grad_names(case: Case) -> list[str]:
    return list(FORM_INPUTS[case.form]) + list(weight_shapes(case.spec))


def expected_checks(case: Case, ref: Reference) -> list[str]:
    if case.checks != NUMERIC:
        return list(case.checks)
    names = ["output"] + [f"grad.{n}" for n in grad_names(case)]
    return names + (["fully_masked"] if ref.data.fully_masked.any() else [])


# ---------------------------------------------------------------------------------------
# Running and judging.

class _Judge:
    """Builds the CheckResults of one (implementation, case) with a common message form."""

    def __init__(self, subject: Subject, case: Case, options: Options):
        self.subject, self.case, self.options = subject, case, options
        self.results: list[CheckResult] = []

    def add(self, check: str, status: str, text: str, ratio=None, **detail) -> None:
        if status in FAILING:
            text = "\n".join([f"{self.subject.name} :: {self.case.id} :: {check}: {status.upper()}",
                              f"  case: {self.case.describe()}", "  " + text.replace("\n", "\n  "),
                              f"  {self.options.reproduce(self.subject.name, self.case)}"])
        self.results.append(CheckResult(self.case.id, check, status, text, self.case.tags,
                                        ratio, detail))

    def comparison(self, check: str, comparison: tolerance.Comparison, what: str, note: str = "",
                   **detail) -> None:
        text = f"{what}: {comparison.describe()}{note}"
        self.add(check, "pass" if comparison.ok else "fail", text,
                 comparison.ratio, **comparison.worst(), **detail)

    def all(self, checks, status: str, text: str, **detail) -> list[CheckResult]:
        for check in checks:
            self.add(check, status, text, **detail)
        return self.results


def _raised(exc: BaseException) -> str:
    """The exception's type and its whole message (the reason often sits on a later line)."""
    return f"{type(exc).__name__}: {sanitize.capped(str(exc).strip())}"


def _traceback(exc: BaseException) -> dict:
    """``detail`` entries for an exception: its traceback, for reports and ``--traceback``."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"traceback": sanitize.capped(text)}


def _run_args(case: Case, options: Options) -> dict:
    return {"dtype": case.dtype, "device": options.device, "form": case.form}


def judge_case(subject: Subject, case: Case, ref: Reference, options: Options,
               outputs: dict | None = None) -> list[CheckResult]:
    """``outputs``: where given, a numeric case's (out, grads or None) is kept there under
    the case id (the diagnosis reads a failing implementation's outputs from it)."""
    judge = _Judge(subject, case, options)
    checks = expected_checks(case, ref)
    framework_dtypes = subject.backend.dtypes(options.device)
    if case.dtype not in framework_dtypes:
        framework = subject.backend.__name__.rpartition(".")[2]
        return judge.all(checks, "unsupported", f"{DECLINED_BY_FRAMEWORK}{framework} runs "
                         f"{framework_dtypes} on {options.device}, not {case.dtype}")
    try:
        fn = make_fn(subject.factory, case.spec, form=case.form, dtype=case.dtype,
                     device=options.device)
    except Unsupported as exc:
        return judge.all(checks, "unsupported", f"{DECLINED_BY_FACTORY}{exc}")
    except Exception as exc:
        return judge.all(checks, "error", f"factory({case.spec}) raised {_raised(exc)}",
                         **_traceback(exc))
    # After the factory, so that a spec it declines keeps the factory's own reason.
    data = ref.data
    declined = subject.inputs.declines(None if data.mask is None else data.mask.shape,
                                       data.bias is not None, training=case.checks == ("dropout",))
    if case.checks == ("decode",) and not declares_decoding(fn):
        # Decoding is declared by the fn built (SPEC 5): a layer without a cache states a
        # capability it lacks, as a declined spec does, rather than leaving a hole.
        declined = "fn declares no decoding (fn.init_cache and fn.decode)"
    if declined:
        return judge.all(checks, "unsupported", f"{DECLINED_BY_FACTORY}{declined}")
    behaviour = {"stateless": _stateless, "deterministic": _deterministic, "dropout": _dropout,
                 "contract": _contract, "decode": judge_decode}
    if case.checks != NUMERIC:
        try:
            behaviour[case.checks[0]](judge, fn, ref)
        except Unsupported as exc:
            judge.add(case.checks[0], "unsupported", str(exc))
        except Exception as exc:
            _report_raised(judge, [case.checks[0]], fn, ref.data, exc)
        return judge.results
    _numeric(judge, fn, ref, checks, outputs)
    return judge.results


def _numeric(judge: _Judge, fn, ref: Reference, checks: list[str], outputs=None) -> None:
    case, data, backend = judge.case, ref.data, judge.subject.backend
    args = (fn, data.weights, data.query, data.key, data.value)
    kwargs = dict(mask=data.mask, bias=data.bias, **_run_args(case, judge.options))
    grad_checks = [c for c in checks if c.startswith("grad.")]
    grads, grads_problem = None, None
    try:
        out, grads = backend.forward_and_vjp(*args, ref.d_out, **kwargs)
    except Unsupported as exc:
        grads_problem = ("unsupported", f"gradients: {exc}", {})
    except Exception as exc:
        grads_problem = ("error", f"gradients: forward_and_vjp raised {_raised(exc)}",
                         _traceback(exc))
    if grads is None:
        try:
            out = backend.forward(*args, **kwargs)
        except Unsupported as exc:
            judge.all(checks, "unsupported", str(exc))
            return
        except Exception as exc:
            _report_raised(judge, checks, fn, data, exc)
            return
    if outputs is not None:
        outputs[case.id] = (out, grads)

    strict = judge.options.strict_fully_masked
    rows = data.fully_masked[..., None]                     # (B, L_q, 1)
    judge.comparison("output", tolerance.compare(
        out, ref.out, case.dtype, baseline=ref.base_out, valid=None if strict else ~rows), "output")

    non_finite_grads = False
    if grads_problem:
        status, text, detail = grads_problem
        for check in grad_checks:
            judge.add(check, status, text, **detail)
    else:
        non_finite_grads = _judge_grads(judge, grads, ref, grad_checks)
    if "fully_masked" in checks:
        _fully_masked(judge, out, ref, non_finite_grads)


def _judge_grads(judge: _Judge, grads: dict, ref: Reference, grad_checks: list[str]) -> bool:
    """Compare every gradient, every element; returns whether any held NaN or Inf."""
    case = judge.case
    scale = tolerance.gradient_scale(ref.grads)
    non_finite = False
    for check in grad_checks:
        name = check.removeprefix("grad.")
        if name not in grads:
            judge.add(check, "fail", f"the adapter returned no gradient for {name!r} "
                      f"(got {sorted(grads)})")
            continue
        actual = np.asarray(grads[name], dtype=np.float64)
        note = ""
        if actual.shape == ref.grads[name].shape and not np.isfinite(actual).all():
            non_finite = True
            note = f" [{int((~np.isfinite(actual)).sum())} of {actual.size} elements non-finite]"
        judge.comparison(check, tolerance.compare_gradient(
            name, actual, ref.grads[name], case.dtype, scale=scale,
            baseline=None if ref.base_grads is None else ref.base_grads[name]), f"gradient {name!r}", note)
    return non_finite


# ---------------------------------------------------------------------------------------
# Rows with no visible key.

def _uniform_rows(data: CaseData) -> np.ndarray:
    """(B, E_o): each head's output is the plain mean of every value."""
    s = data.case.spec
    v = data.value @ data.weights["wv"] + (data.weights["bv"] if s.bias else 0.0)
    means = v.mean(axis=1).reshape(v.shape[0], s.H_kv, s.d_v)
    heads = np.repeat(means, s.group_size, axis=1).reshape(v.shape[0], s.H * s.d_v)
    return heads @ data.weights["wo"] + (data.weights["bo"] if s.bias else 0.0)


def _candidates(ref: Reference) -> dict[str, np.ndarray]:
    """What each known behaviour puts in every row, shape (B, L_q, E_o)."""
    data = ref.data
    s = data.case.spec
    unmasked_spec = s.replace(causal=None, window=None)
    unmasked = oracle.forward(unmasked_spec, data.weights, data.query, data.key, data.value,
                              None, data.bias)
    uniform = np.broadcast_to(_uniform_rows(data)[:, None, :], unmasked.shape)
    return {"zeros": ref.out, "uniform": uniform, "unmasked": unmasked}


_CLASSIFY_TOLERANCE = {"float64": 1e-6, "float32": 1e-3, "float16": 3e-2, "bfloat16": 1e-1}


def classify_fully_masked(out: np.ndarray, ref: Reference) -> collections.Counter:
    """How many fully-masked rows follow each behaviour (the nearest one within tolerance)."""
    candidates = _candidates(ref)
    scale = max(float(np.abs(ref.out).max()), 1e-300)
    tol = _CLASSIFY_TOLERANCE[ref.data.case.dtype]
    counts = collections.Counter()
    for b, i in np.argwhere(ref.data.fully_masked):
        row = out[b, i]
        if not np.isfinite(row).all():
            counts["nan"] += 1
            continue
        distances = {k: float(np.abs(row - c[b, i]).max()) / scale for k, c in candidates.items()}
        nearest = min(distances, key=distances.get)
        counts[nearest if distances[nearest] <= tol else "other"] += 1
    return counts


def _behaviour_name(counts: collections.Counter) -> str:
    if len(counts) == 1:
        return next(iter(counts))
    return "mixed(" + ", ".join(f"{k}:{n}" for k, n in sorted(counts.items())) + ")"


def _fully_masked(judge: _Judge, out, ref: Reference, non_finite_grads: bool) -> None:
    out = np.asarray(out, dtype=np.float64)
    rows = int(ref.data.fully_masked.sum())
    if out.shape != ref.out.shape:
        judge.add("fully_masked", "fail", f"output shape {out.shape}, expected {ref.out.shape}")
        return
    counts = classify_fully_masked(out, ref)
    behaviour = _behaviour_name(counts)
    grads = "nan" if non_finite_grads else "finite"
    text = (f"{rows} of {ref.data.fully_masked.size} query rows see no key: {behaviour} "
            f"(spec: zeros); gradients {grads}")
    conforms = behaviour == "zeros" and not non_finite_grads
    status = "fail" if judge.options.strict_fully_masked and not conforms else "pass"
    judge.add("fully_masked", status, text, behaviour=behaviour, grads=grads, rows=rows)


# ---------------------------------------------------------------------------------------
# Behaviour checks.

def _judge_output(judge: _Judge, fn, data: CaseData) -> tolerance.Comparison:
    case = data.case
    out = judge.subject.backend.forward(fn, data.weights, data.query, data.key, data.value,
                                        data.mask, data.bias, **_run_args(case, judge.options))
    expected = oracle.forward(case.spec, data.weights, data.query, data.key, data.value,
                              data.mask, data.bias)
    return tolerance.compare(out, expected, case.dtype, valid=~data.fully_masked[..., None])


def _stateless(judge: _Judge, fn, ref: Reference) -> None:
    """The same fn on new weights and inputs (same shapes, then new lengths), then on the
    first inputs again: each call must match the oracle on its own inputs. A cache keyed on
    the weights' identity, on the shapes, or never reset shows in one of them."""
    first, case = ref.data, judge.case
    user_weights = first.weights if judge.options.weights_path else None

    def other(offset, **lengths):
        return case.replace(seed=(case.seed + offset) % 2 ** 32, **lengths).materialize(user_weights)

    calls = [("first call", first),
             ("second call (new weights and inputs, same shapes)", other(1)),
             ("third call (new weights, inputs and lengths)",
              other(2, L_q=case.L_q + (2 if case.form == "self" else 1), L_k=case.L_k + 2)),
             ("fourth call (the first inputs again)", first)]
    for what, data in calls:
        comparison = _judge_output(judge, fn, data)
        if not comparison.ok:
            judge.add("stateless", "fail", f"{what}: {comparison.describe()}; "
                      f"does the fn keep state between calls?", comparison.ratio, **comparison.worst())
            return
    judge.add("stateless", "pass", f"{len(calls)} calls, each matches the oracle")


def _deterministic(judge: _Judge, fn, ref: Reference) -> None:
    data = ref.data
    run = lambda: judge.subject.backend.forward(  # noqa: E731
        fn, data.weights, data.query, data.key, data.value, data.mask, data.bias,
        **_run_args(judge.case, judge.options))
    first, second = run(), run()
    if first.shape == second.shape and np.array_equal(first, second, equal_nan=True):
        judge.add("deterministic", "pass", "two inference calls, identical bits")
        return
    if first.shape != second.shape:
        judge.add("deterministic", "fail", f"two calls gave shapes {first.shape} and {second.shape}")
        return
    differ = ~((first == second) | (np.isnan(first) & np.isnan(second)))
    index = tuple(int(i) for i in np.argwhere(differ)[0])
    judge.add("deterministic", "fail", f"two inference calls on the same inputs differ in "
              f"{int(differ.sum())} elements, e.g. {list(index)}: {float(first[index]):.9g} then "
              f"{float(second[index]):.9g}")


# The probe's drop rate bound: Hoeffding gives P(|rate - p| >= t) <= 2 exp(-2 N t^2), about
# 1e-35 for N = 16384 samples and t = 0.05, while a wrong rate (1 - p, or none) misses by 0.3+.
DROPOUT_RATE_SLACK = 0.05


def accepts_training(fn) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True   # cannot tell: let the call decide
    return any(p.name == "training" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def dropout_probe(case: Case) -> CaseData:
    """Inputs that make ``out`` the dropped, rescaled attention weights themselves.

    Zero query/key weights give every key the weight 1/L_k; identity value and output
    weights with one-hot values copy weight j of row i to out[b, i, j]. So every output
    element is 0 (dropped) or 1/(L_k (1 - p)) (kept and rescaled).
    """
    s = case.spec
    if not (s.H == 1 and not s.bias and s.E == s.E_v == s.E_o == s.d_v == case.L_k):
        raise ValueError(f"{case.id}: the dropout probe needs one head, no bias and "
                         f"d_model == value size == out_dim == L_k")
    L = case.L_k
    weights = {"wq": np.zeros((s.E, s.d_k)), "wk": np.zeros((s.E_k, s.d_k)),
               "wv": np.eye(L), "wo": np.eye(L)}
    value = np.broadcast_to(np.eye(L), (case.B, L, L)).copy()
    query = value if case.form == "self" else (
        np.random.default_rng(case.seed).standard_normal((case.B, case.L_q, s.E)))
    return CaseData(case, weights, query, value, value, None, None,
                    np.zeros((case.B, case.L_q, s.E_o)), np.zeros((case.B, case.L_q), bool))


def _dropout(judge: _Judge, fn, ref: Reference) -> None:
    if not accepts_training(fn):
        raise Unsupported("fn takes no training keyword: dropout cannot be exercised")
    case = judge.case
    p = case.spec.dropout
    data = dropout_probe(case)
    out = judge.subject.backend.forward(
        fn, data.weights, data.query, data.key, data.value, None, None, training=True,
        seed=case.seed, **_run_args(case, judge.options))
    kept_value = 1.0 / (case.L_k * (1.0 - p))
    if out.shape != (case.B, case.L_q, case.L_k):
        judge.add("dropout", "fail",
                  f"output shape {out.shape}, expected {(case.B, case.L_q, case.L_k)}")
        return
    dropped = np.abs(out) <= 1e-3 * kept_value
    kept = np.abs(out - kept_value) <= 1e-3 * kept_value
    odd = ~(dropped | kept)
    if odd.any():
        index = tuple(int(i) for i in np.argwhere(odd)[0])
        judge.add("dropout", "fail", f"attention weight {list(index)} is {float(out[index]):.6g}: "
                  f"neither dropped (0) nor kept and scaled by 1/(1-p) ({kept_value:.6g}, p={p})",
                  math.inf)
        return
    rate = float(dropped.mean())
    detail = {"rate": rate, "p": p, "samples": int(out.size)}
    if abs(rate - p) > DROPOUT_RATE_SLACK:
        judge.add("dropout", "fail", f"drop rate {rate:.4f} over {out.size} weights, expected "
                  f"p={p} +- {DROPOUT_RATE_SLACK}", abs(rate - p) / DROPOUT_RATE_SLACK, **detail)
        return
    judge.add("dropout", "pass", f"drop rate {rate:.4f} (p={p}), kept weights scaled by 1/(1-p)",
              abs(rate - p) / DROPOUT_RATE_SLACK, **detail)


# ---------------------------------------------------------------------------------------
# The calling contract (SPEC 5): what the fn does to its arguments and what it returns.

class ContractBroken(Exception):
    """The fn returned something the adapter cannot take: not a tensor of its framework."""


class _Spy:
    """Stands in for ``fn`` in the adapter's call: notes every argument the fn changed in
    place, and what it returned (``ContractBroken`` when that is not a tensor of the
    framework, before the adapter trips over it)."""

    def __init__(self, fn, backend):
        self.fn, self.backend = fn, backend
        self.changed: list[str] = []
        self.dtypes: tuple | None = None        # (returned, expected)

    def __call__(self, params, query, key, value, mask=None, bias=None, **kwargs):
        arguments = {"query": query, "key": key, "value": value, "mask": mask, "bias": bias,
                     **{f"params[{name!r}]": t for name, t in params.items()}}
        arguments = {name: t for name, t in arguments.items() if t is not None}
        before = {name: self.backend.to_numpy(t).copy() for name, t in arguments.items()}
        out = self.fn(params, query, key, value, mask=mask, bias=bias, **kwargs)
        self.changed = [name for name, t in arguments.items()
                        if not _same(self.backend.to_numpy(t), before[name])]
        problem = not_a_tensor(out, query)
        if problem:
            raise ContractBroken(problem)
        self.dtypes = (out.dtype, query.dtype)
        return out


def _same(after: np.ndarray, before: np.ndarray) -> bool:
    return after.shape == before.shape and np.array_equal(after, before, equal_nan=True)


def not_a_tensor(out, like) -> str | None:
    """Why ``out`` is not a tensor of the framework ``like`` (an input it was handed) is
    from, or None. A subclass, or a type that shares a base with ``like``'s, is one."""
    expected = type(like)
    bases = set(expected.__mro__) - {object}
    if isinstance(out, expected) or bases & set(type(out).__mro__):
        return None
    what = "None" if out is None else f"a {type(out).__module__}.{type(out).__qualname__}"
    return (f"the fn returned {what}, not a tensor of its framework "
            f"({expected.__module__}.{expected.__qualname__})")


def _contract(judge: _Judge, fn, ref: Reference) -> None:
    data = ref.data
    spy = _Spy(fn, judge.subject.backend)
    try:
        judge.subject.backend.forward(spy, data.weights, data.query, data.key, data.value,
                                      data.mask, data.bias, **_run_args(judge.case, judge.options))
    except ContractBroken as exc:
        judge.add("contract", "fail", str(exc))
        return
    problems = []
    if spy.changed:
        problems.append(f"the fn changed its arguments in place: {', '.join(spy.changed)} "
                        f"(the caller's tensors must be left as they were)")
    returned, expected = spy.dtypes
    if returned != expected:
        problems.append(f"the fn returned dtype {returned} for inputs of dtype {expected}")
    if problems:
        judge.add("contract", "fail", "; ".join(problems))
        return
    judge.add("contract", "pass", "arguments left unchanged; a tensor of the framework "
              "returned, of the inputs' dtype")


def _report_raised(judge: _Judge, checks, fn, data: CaseData, exc: Exception) -> None:
    """An exception from the adapter's call: a contract failure when the fn returned what
    the adapter cannot take (a list, None: the adapter's own AttributeError says nothing),
    otherwise an error with the exception's whole message and its traceback."""
    if not isinstance(exc, ContractBroken):
        try:
            judge.subject.backend.forward(_Spy(fn, judge.subject.backend), data.weights,
                                          data.query, data.key, data.value, data.mask,
                                          data.bias, **_run_args(judge.case, judge.options))
        except ContractBroken as broken:
            exc = broken
        except Exception:
            pass
    if isinstance(exc, ContractBroken):
        judge.all(checks, "fail", f"contract: {exc}")
    else:
        judge.all(checks, "error", f"raised {_raised(exc)}", **_traceback(exc))
