"""Judging in this process: what a gate worker runs (conformance/worker.py), what
``check(isolate=False)`` runs, and what the pytest face calls.

``judge_in_process(names, cases, options, trained_weights)`` yields events, ``i`` the
implementation's position in ``names``:

- ``("start", i, case_id | None)``: implementation i's code is about to run, to load it
  (None) or on that case; the parent blames it if the process dies or hangs now;
- ``("loaded", i, error | None)``;
- ``("result", i, CheckResult)``, one per check;
- ``("case_done", i, {"case": id, "seconds": time spent judging it})``;
- after the cases, for each implementation with a failing check (unless
  ``options.diagnose`` is off), ``("diagnosis", i, [hypotheses])`` (conformance/diagnosis.py).

Case-major: each case's oracle results serve every implementation. They are all computed
first, before any implementation is imported, so no plug-in code has run in the process
when the oracle does. A case moved into another call form for an implementation that takes
only that form (``Subject.case_for``) has its own oracle results, computed when first
needed.

The weights of ``--weights`` go by three names along the way: ``weights_path`` (the
file), ``trained_weights`` (``(spec, arrays)`` as ``load_weights`` returns them) and
``case_weights`` (the arrays, for a case on that spec; None for the others).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import traceback
from typing import Iterator, Sequence

import numpy as np

from attnsuite.conformance.cases import Case
from attnsuite.conformance.checks import (FAILING, CheckResult, Options, Reference, Subject, judge_case,
                                          reference)
from attnsuite.conformance.diagnosis import diagnosis_events
from attnsuite.impls.backends import load_backend
from attnsuite.impls.calling import forms_of, inputs_of
from attnsuite.impls.entry import Entry
from attnsuite.impls.registry import find_entry, load_factory


class BackendConflict(RuntimeError):
    """The implementation needs an environment (KERAS_BACKEND) this process can no longer
    give: it can only be judged in another process (``attnsuite check`` gives it one)."""


def apply_env(entry: Entry) -> None:
    """Set the environment the entry needs (KERAS_BACKEND) if this process still can."""
    for name, value in entry.env:
        current = os.environ.get(name)
        if name == "KERAS_BACKEND" and "keras" in sys.modules:
            current = sys.modules["keras"].backend.backend()
        if current not in (None, value):
            raise BackendConflict(f"{entry.name}: needs {name}={value}, but this process already "
                                  f"runs {name}={current}; attnsuite check judges it in another process")
        os.environ[name] = value


def load_subject(name: str, device: str = "cpu") -> Subject:
    """Resolve, import and check one implementation; every failure raises with the reason."""
    entry = find_entry(name)
    apply_env(entry)
    factory = load_factory(entry)
    backend = load_backend(entry.framework)
    available = backend.devices()
    if device not in available:
        raise RuntimeError(f"{name}: device {device!r} is not available to {entry.framework} "
                           f"(it has {available})")
    return Subject(name, factory, backend, forms_of(factory, name), inputs_of(factory, name))


def case_weights(trained_weights, case: Case) -> dict | None:
    """The trained arrays for a case on their spec; None (seeded weights) for the others."""
    if trained_weights is not None and case.spec == trained_weights[0]:
        return trained_weights[1]
    return None


def case_reference(case: Case, trained_weights, options: Options) -> Reference:
    return reference(case, case_weights(trained_weights, case), options.strict_fully_masked)


def output_file(folder, name: str, case_id: str) -> str:
    """Where ``Options.outputs_dir`` keeps implementation ``name``'s output on a case (.npy)."""
    digest = hashlib.sha256(f"{name}::{case_id}".encode()).hexdigest()[:24]
    return os.path.join(folder, f"{digest}.npy")


def judge(subject: Subject, case: Case, ref: Reference, options: Options,
          outputs: dict | None = None) -> list[CheckResult]:
    """One implementation on one case; a bug of the suite's own is an error result, so
    that the other implementations are still judged. ``outputs``: see checks.judge_case."""
    try:
        return judge_case(subject, case, ref, options, outputs)
    except Exception:
        return [CheckResult(case.id, "suite", "error", f"{subject.name} :: {case.id}: "
                            f"the suite failed:\n{traceback.format_exc()}", case.tags)]


def judge_in_process(names: Sequence[str], cases: Sequence[Case], options: Options,
                     trained_weights=None, first_case: Sequence[int] | None = None) -> Iterator[tuple]:
    """The events of the module docstring. ``first_case[i]``: the case implementation i
    starts at (a fresh worker carrying on after a dead one)."""
    first_case = list(first_case) if first_case is not None else [0] * len(names)
    start = min(first_case, default=0)
    references = {c: case_reference(case, trained_weights, options)
                  for c, case in enumerate(cases) if c >= start}
    subjects: list[Subject | None] = []
    for i, name in enumerate(names):
        yield ("start", i, None)
        try:
            subjects.append(load_subject(name, options.device))
            yield ("loaded", i, None)
        except Exception as exc:
            subjects.append(None)
            yield ("loaded", i, str(exc).strip() or type(exc).__name__)
    judged = [[] for _ in subjects]           # CheckResults, for the diagnosis
    judged_cases = [[] for _ in subjects]     # each case in the call form it was judged in
    outputs = [{} for _ in subjects]          # what failing cases gave, for the diagnosis
    for c, case in enumerate(cases):
        if c < start:
            continue
        moved: dict[str, Reference] = {}      # the case in another call form
        for i, subject in enumerate(subjects):
            if subject is None or c < first_case[i]:
                continue
            target = subject.case_for(case, options.seed)
            if target is case:
                ref = references[c]
            else:
                if target.id not in moved:
                    moved[target.id] = case_reference(target, trained_weights, options)
                ref = moved[target.id]
            yield ("start", i, target.id)
            began = time.perf_counter()
            keep = options.diagnose or options.outputs_dir is not None
            results = judge(subject, target, ref, options, outputs[i] if keep else None)
            seconds = time.perf_counter() - began
            if options.outputs_dir is not None and target.id in outputs[i]:
                np.save(output_file(options.outputs_dir, subject.name, target.id),
                        np.asarray(outputs[i][target.id][0], dtype=np.float64))
            judged[i] += results
            judged_cases[i].append(target)
            if not any(r.status in FAILING for r in results):
                outputs[i].pop(target.id, None)
            for result in results:
                yield ("result", i, result)
            yield ("case_done", i, {"case": target.id, "seconds": seconds})
    if options.diagnose:
        yield from diagnosis_events(subjects, judged_cases, judged, outputs, options, trained_weights)
