"""The runner: every implementation of a run, judged on every case of a profile.

    from attnsuite.conformance.runner import check
    result = check(["numpy.oracle", "torch.fused"], profile="quick")
    for impl in result.implementations:
        print(impl.name, impl.verdict, impl.reason)

The orchestration only: it picks the cases, describes the environment, and turns the
events of the judging (``judging.judge_in_process`` here, or ``pool.judge_isolated`` in
worker processes with ``isolate=True``) into ``results.RunResult``. A plug-in that cannot
be loaded, or that kills or hangs its worker, is an "error" verdict with the reason, and
every other implementation is still judged. Ctrl-C (or SIGTERM under
``attnsuite.processes.interrupt_on_sigterm``) ends the run's processes and returns what
was judged, marked ``interrupted``.
"""

from __future__ import annotations

import datetime
import fnmatch
import hashlib
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from attnsuite import sanitize
from attnsuite import environment as suite_environment
from attnsuite.conformance.cases import Case, catalog, find_case, generated_cases
from attnsuite.conformance.checks import Options
from attnsuite.conformance.coverage import LOW_COVERAGE
from attnsuite.conformance.judging import judge_in_process
from attnsuite.conformance.pool import DEFAULT_TIMEOUT, judge_isolated
from attnsuite.conformance.results import FAILING, ImplResult, RunResult  # noqa: F401 (the API's names)
from attnsuite.conformance.weights import load_weights
from attnsuite.conformance.xfails import Xfails
from attnsuite.impls.registry import find_entry
from attnsuite.processes import interrupt_signal


# ---------------------------------------------------------------------------------------
# Choosing the cases.

def select_cases(profile: str = "quick", dtypes: Iterable[str] | None = None, case_filter=None,
                 seed: int = 0, spec=None, generated: int = 0) -> list[Case]:
    """The profile's cases (and ``generated`` generated ones, drawn from ``seed``), filtered.

    ``case_filter``: None; a case id (of any profile, call form or generated case: the
    repro line of a failure works from any run); an fnmatch pattern over the selected
    cases' ids; a list of those; or a predicate ``Case -> bool``.
    """
    if generated < 0:
        raise ValueError(f"generated: a number of cases >= 0, got {generated}")
    cases = catalog(profile, dtypes, seed, spec)
    if generated:
        cases += generated_cases(generated, seed, dtypes or ("float64", "float32"))
    if case_filter is None:
        return cases
    if callable(case_filter):
        return [c for c in cases if case_filter(c)]
    patterns = [case_filter] if isinstance(case_filter, str) else list(case_filter)
    chosen: dict[str, Case] = {}
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matched = [c for c in cases if fnmatch.fnmatchcase(c.id, pattern)]
            if not matched:
                raise ValueError(f"case pattern {pattern!r} matches no case of profile {profile!r}")
        else:
            matched = [find_case(pattern, seed, spec)]
        chosen.update((c.id, c) for c in matched)
    return list(chosen.values())


# ---------------------------------------------------------------------------------------
# The run.

def environment(*, profile, dtypes, device, seed, strict_fully_masked, weights_path,
                weights_spec, cases) -> dict:
    packages = suite_environment.versions()
    weights = None
    if weights_path is not None:
        digest = hashlib.sha256(Path(weights_path).read_bytes()).hexdigest()
        weights = {"path": str(weights_path), "sha256": digest, "spec": weights_spec.to_dict()}
    return {
        "suite": {"name": "attnsuite", "version": packages.pop("attnsuite", None),
                  **suite_environment.git_commit()},
        "frameworks": packages,
        **suite_environment.platform_info(),
        "device": device,
        "profile": profile,
        "dtypes": list(dtypes) if dtypes else None,
        "seed": seed,
        "strict_fully_masked": strict_fully_masked,
        "weights": weights,
        "cases": len(cases),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


class _Progress:
    """A rich progress bar on stderr, shown only once a run has lasted a few seconds."""

    def __init__(self, enabled: bool, total: int, delay: float = 2.0):
        self.enabled, self.total, self.delay = enabled, total, delay
        self.start, self.done, self.bar, self.task = time.monotonic(), 0, None, None

    def advance(self, text: str | None, steps: int = 1) -> None:
        """Count ``steps`` done; ``text`` (when given) says what runs now."""
        self.done += steps
        if not self.enabled:
            return
        if self.bar is None and time.monotonic() - self.start > self.delay:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn)
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("starting the frameworks", total=self.total)
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
            if text:
                self.bar.update(self.task, description=sanitize.one_line(text, sanitize.PROGRESS_CHARS))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def check(impls: Sequence[str], profile: str = "quick", dtypes: Iterable[str] | None = None,
          device: str = "cpu", weights_path=None, xfails=None, strict_fully_masked: bool = False,
          case_filter: str | Sequence[str] | Callable[[Case], bool] | None = None,
          isolate: bool = False, progress: bool = False, seed: int = 0,
          jobs: int | None = None, timeout: float = DEFAULT_TIMEOUT,
          min_coverage: float | None = None, generated: int = 0,
          diagnose: bool = True, cases: Sequence[Case] | None = None,
          outputs_dir=None) -> RunResult:
    """Judge every implementation on every selected case; see the module docstring.

    ``weights_path``: a ``--weights`` file (see conformance.weights). ``xfails``: a path,
    lines, or an ``Xfails``. ``timeout``: seconds one implementation may take on one case
    (enforced with ``isolate=True``). ``min_coverage``: a share of the checks (0 to 1) that
    an implementation must be judged on to pass (conformance.coverage). ``generated``: that
    many generated cases besides the profile's. ``diagnose``: name the likely bug of each
    failing implementation (``ImplResult.diagnosis``, conformance/diagnosis.py). ``cases``:
    these cases instead of the profile's (``attnsuite port``). ``outputs_dir``: a folder
    where each numeric case's output is kept (``judging.output_file``). Usage
    errors (unknown profile, dtype, case, unreadable weights or xfails file) raise
    ValueError before anything runs.
    """
    names = list(impls)
    dtypes = list(dtypes) if dtypes else None
    trained_weights = load_weights(weights_path) if weights_path is not None else None
    weights_spec = trained_weights[0] if trained_weights is not None else None
    if cases is None:
        cases = select_cases(profile, dtypes, case_filter, seed, weights_spec, generated)
    cases = list(cases)
    xfail_list = Xfails.coerce(xfails)
    options = Options(device, strict_fully_masked, None if weights_path is None else str(weights_path), seed,
                      diagnose, None if outputs_dir is None else str(outputs_dir))
    env = environment(profile=profile, dtypes=dtypes, device=device, seed=seed,
                      strict_fully_masked=strict_fully_masked, weights_path=weights_path,
                      weights_spec=weights_spec, cases=cases)

    results = [ImplResult(name) for name in names]
    for impl in results:
        try:
            entry = find_entry(impl.name)
            impl.framework, impl.kind = entry.framework, entry.kind
        except Exception:
            pass
    if isolate:
        events = judge_isolated(names, cases, options, weights_path, jobs, timeout)
    else:
        events = judge_in_process(names, cases, options, trained_weights)

    bar = _Progress(progress, len(names) * len(cases))
    finished_cases = [0] * len(names)
    interrupted = None
    try:
        for event, index, payload in events:
            if event == "tick":
                bar.advance(None, 0)
            elif event == "loaded":
                if payload is not None:
                    results[index].reason = payload
                    bar.advance(f"{names[index]}: {payload}", len(cases))
            elif event == "result":
                results[index].results.append(xfail_list.apply(names[index], payload))
            elif event == "case_done":
                finished_cases[index] += 1
                results[index].seconds += payload["seconds"]
                bar.advance(f"{names[index]} {payload['case']}")
            elif event == "diagnosis":
                results[index].diagnosis = payload
            elif event == "lost":
                results[index].reason = payload
                bar.advance(f"{names[index]}: {payload}", len(cases) - finished_cases[index])
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the workers are gone; keep what was judged
        interrupted = interrupt_signal(exc).name
    finally:
        events.close()
        bar.close()
    warnings = xfail_list.unmatched()
    for impl, done in zip(results, finished_cases):
        impl.finish(min_coverage)
        if interrupted and done < len(cases) and impl.verdict == "pass":
            impl.verdict = "untested"
            impl.reason = f"the run was interrupted ({interrupted}) after {done} of {len(cases)} cases"
        judged = impl.coverage()
        if impl.verdict == "pass" and judged.share < LOW_COVERAGE:
            warnings.append(f"{impl.name} passed, but on only {judged.describe()} "
                            f"(--min-coverage to require more)")
    return RunResult(results, list(cases), env, warnings, interrupted)
