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
import socket
from pathlib import Path
from typing import Callable, Iterable, Sequence

from attnsuite import environment as suite_environment
from attnsuite.conformance.cases import Case, catalog, find_case, generated_cases
from attnsuite.conformance.checks import Options
from attnsuite.conformance.coverage import LOW_COVERAGE
from attnsuite.conformance.judging import judge_in_process
from attnsuite.conformance.pool import DEFAULT_TIMEOUT, judge_isolated, worker_settings
from attnsuite.conformance.shards import shard_positions
from attnsuite.conformance.progress import Progress
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
                weights_spec, cases, min_coverage=None, xfail_strict=False) -> dict:
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
        "hostname": socket.gethostname(),
        "device": device,
        "profile": profile,
        "dtypes": list(dtypes) if dtypes else None,
        "seed": seed,
        "strict_fully_masked": strict_fully_masked,
        "weights": weights,
        "min_coverage": min_coverage,
        "xfail_strict": xfail_strict,
        "cases": len(cases),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _case_done(impl: ImplResult, pending: list, xfails: Xfails, seconds: float | None = None) -> None:
    """Move the checks of a case into ``impl``: each with an even share of the case's time
    (its checks are judged together), the expected failures applied to the case as a whole."""
    for r in pending:
        r.seconds = None if seconds is None else seconds / len(pending)
    impl.results += xfails.apply_case(impl.name, pending)
    pending.clear()


def _done_summary(impl: ImplResult, cases: int) -> str:
    failing = sum(r.status in FAILING for r in impl.results)
    return f"{cases} cases, {failing} failing checks ({impl.seconds:.1f}s judging)"


def check(impls: Sequence[str], profile: str = "quick", dtypes: Iterable[str] | None = None,
          device: str = "cpu", weights_path=None, xfails=None, strict_fully_masked: bool = False,
          case_filter: str | Sequence[str] | Callable[[Case], bool] | None = None,
          isolate: bool = False, progress: bool | str = False, seed: int = 0,
          jobs: int | None = None, timeout: float = DEFAULT_TIMEOUT,
          min_coverage: float | None = None, generated: int = 0,
          diagnose: bool = True, shard: tuple[int, int] | None = None,
          xfail_strict: bool = False, cases: Sequence[Case] | None = None,
          outputs_dir=None) -> RunResult:
    """Judge every implementation on every selected case; see the module docstring.

    ``weights_path``: a ``--weights`` file (see conformance.weights). ``xfails``: a path,
    lines, or an ``Xfails``. ``timeout``: seconds one implementation may take on one case
    (enforced with ``isolate=True``). ``min_coverage``: a share of the checks (0 to 1) that
    an implementation must be judged on to pass (conformance.coverage). ``generated``: that
    many generated cases besides the profile's. ``diagnose``: name the likely bug of each
    failing implementation (``ImplResult.diagnosis``, conformance/diagnosis.py).
    ``shard``: (K, N), judge only shard K of N of the cases (conformance/shards.py).
    ``progress``: "bar" (or True), "lines" (for a log), or False (conformance.progress).
    ``xfail_strict``: an unexpected pass of an xfail pattern fails (conformance/xfails.py).
    ``cases``: these cases instead of the profile's (``attnsuite port``). ``outputs_dir``: a
    folder where each numeric case's output is kept (``judging.output_file``). Usage
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
    shard_info = None
    if shard is not None:
        index, count = shard
        if count > len(cases):
            raise ValueError(f"--shard {index}/{count}: the run has only {len(cases)} cases")
        positions = shard_positions(cases, index, count)
        # The whole selection's digest: shards of runs that chose other cases never merge.
        selection = hashlib.sha256("\n".join(c.id for c in cases).encode()).hexdigest()[:16]
        shard_info = {"index": index, "count": count, "positions": positions, "cases_total": len(cases),
                      "selection": selection}
        cases = [cases[p] for p in positions]
    xfail_list = Xfails.coerce(xfails, xfail_strict)
    options = Options(device, strict_fully_masked, None if weights_path is None else str(weights_path), seed,
                      diagnose, None if outputs_dir is None else str(outputs_dir))
    env = environment(profile=profile, dtypes=dtypes, device=device, seed=seed,
                      strict_fully_masked=strict_fully_masked, weights_path=weights_path,
                      weights_spec=weights_spec, cases=cases, min_coverage=min_coverage,
                      xfail_strict=xfail_list.strict)

    results = [ImplResult(name) for name in names]
    for impl in results:
        try:
            entry = find_entry(impl.name)
            impl.framework, impl.kind = entry.framework, entry.kind
        except Exception:
            pass
    if isolate:
        env["worker_settings"] = worker_settings([impl.framework for impl in results if impl.framework], device)
        events = judge_isolated(names, cases, options, weights_path, jobs, timeout)
    else:
        events = judge_in_process(names, cases, options, trained_weights)

    bar = Progress("bar" if progress is True else (progress or None), len(names) * len(cases))
    finished_cases = [0] * len(names)
    pending = [[] for _ in names]       # the results of each one's case in progress
    interrupted = None
    try:
        for event, index, payload in events:
            if event == "tick":
                bar.advance(None, 0)
            elif event == "loaded":
                if payload is not None:
                    results[index].reason = payload
                    bar.advance(f"{names[index]}: {payload}", len(cases))
                    bar.finished(names[index], f"error: {payload}")
            elif event == "result":
                pending[index].append(payload)
            elif event == "case_done":
                finished_cases[index] += 1
                results[index].seconds += payload["seconds"]
                _case_done(results[index], pending[index], xfail_list, payload["seconds"])
                bar.advance(f"{names[index]} {payload['case']}")
                if finished_cases[index] == len(cases):
                    bar.finished(names[index], _done_summary(results[index], len(cases)))
            elif event == "diagnosis":
                results[index].diagnosis = payload
            elif event == "lost":
                results[index].reason = payload
                _case_done(results[index], pending[index], xfail_list)
                bar.advance(f"{names[index]}: {payload}", len(cases) - finished_cases[index])
                bar.finished(names[index], f"error: {payload}")
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the workers are gone; keep what was judged
        interrupted = interrupt_signal(exc).name
    finally:
        events.close()
        bar.close()
        for impl, unfinished in zip(results, pending):   # a case cut short by a dead worker
            _case_done(impl, unfinished, xfail_list)
    warnings = xfail_list.unmatched(names)
    for impl, done in zip(results, finished_cases):
        impl.finish(min_coverage)
        if interrupted and done < len(cases) and impl.verdict == "pass":
            impl.verdict = "untested"
            impl.reason = f"the run was interrupted ({interrupted}) after {done} of {len(cases)} cases"
        warnings += low_coverage_warnings([impl])
    return RunResult(results, list(cases), env, warnings, interrupted, shard_info)


def low_coverage_warnings(implementations: Iterable) -> list[str]:
    """A warning for each passing implementation judged on less than LOW_COVERAGE."""
    warnings = []
    for impl in implementations:
        judged = impl.coverage()
        if impl.verdict == "pass" and judged.share < LOW_COVERAGE:
            warnings.append(f"{impl.name} passed, but on only {judged.describe()} "
                            f"(--min-coverage to require more)")
    return warnings
