"""The runner: every implementation of a run, judged on every case of a profile.

    from attnsuite.conformance.runner import check
    result = check(["numpy.oracle", "torch.fused"], profile="quick")
    for impl in result.implementations:
        print(impl.name, impl.verdict, impl.reason)

With ``isolate=True`` the implementations are judged in one subprocess per
``Entry.process_key`` (a framework and its environment: the Keras entries need
``KERAS_BACKEND`` set before import; a JAX group is spread over up to ``jobs`` of them),
at most ``jobs`` at once, each streaming its results back as JSON lines: start-up is paid
once per framework, and a crash takes down only its own group. A plug-in that cannot be
loaded is an "error" verdict with the reason, and every other implementation is still judged.
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from attnsuite.conformance.cases import Case, catalog, find_case, generated_cases
from attnsuite.conformance.coverage import LOW_COVERAGE, Coverage, coverage
from attnsuite.conformance.checks import CheckResult, Options, Subject, judge_case, reference
from attnsuite.conformance.diagnosis import diagnosis_events
from attnsuite.conformance.weights import load_weights
from attnsuite.conformance.xfails import Xfails
from attnsuite.impls.backends import load_backend
from attnsuite.impls.calling import forms_of
from attnsuite.impls.entry import Entry
from attnsuite.impls.registry import find_entry, load_factory

REPO_ROOT = Path(__file__).resolve().parent.parent
FAILING = ("fail", "error")


@dataclasses.dataclass
class ImplResult:
    name: str                               # as given
    framework: str | None = None
    kind: str | None = None                 # oracle | ours | builtin | broken | plugin
    verdict: str = "pass"                   # pass | fail | error | untested
    reason: str | None = None               # why "error" or "untested": the load failure, a dead worker
    results: list[CheckResult] = dataclasses.field(default_factory=list)
    seconds: float = 0.0                    # spent judging its cases (imports not counted)
    diagnosis: list[dict] | None = None     # conformance.diagnosis: None when not diagnosed

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts

    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status in FAILING]

    def coverage(self) -> Coverage:
        return coverage(self.results)

    def finish(self, min_coverage: float | None = None) -> None:
        """The verdict; ``min_coverage`` (a share, 0 to 1): judged on less fails."""
        share = self.coverage().share
        if self.reason is not None:
            self.verdict = "error"
        elif self.failures():
            self.verdict = "fail"
        elif min_coverage is not None and 0 < share < min_coverage:
            self.verdict = "fail"
            self.reason = (f"judged on {self.coverage().describe()}, below --min-coverage "
                           f"{100 * min_coverage:.0f}%")
        elif all(r.status == "unsupported" for r in self.results):
            # Nothing judged is no pass (as pytest exits 5 when no test ran): a gate that
            # declined every case must not turn green.
            self.verdict = "untested"
            why = self.results[0].message if self.results else "no case selected"
            self.reason = f"nothing judged: every case unsupported ({why})"
        else:
            self.verdict = "pass"


@dataclasses.dataclass
class RunResult:
    implementations: list[ImplResult]
    cases: list[Case]
    environment: dict
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(impl.verdict == "pass" for impl in self.implementations)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


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
# Judging in this process.

def _apply_env(entry: Entry) -> None:
    """Set the environment the entry needs (KERAS_BACKEND) if this process still can."""
    for name, value in entry.env:
        current = os.environ.get(name)
        if name == "KERAS_BACKEND" and "keras" in sys.modules:
            current = sys.modules["keras"].backend.backend()
        if current not in (None, value):
            raise RuntimeError(f"{entry.name}: needs {name}={value}, but this process already "
                               f"runs {name}={current}; judge it in a process of its own "
                               f"(attnsuite check does)")
        os.environ[name] = value


def load_subject(name: str, device: str = "cpu") -> Subject:
    """Resolve, import and check one implementation; every failure raises with the reason."""
    entry = find_entry(name)
    _apply_env(entry)
    factory = load_factory(entry)
    backend = load_backend(entry.framework)
    available = backend.devices()
    if device not in available:
        raise RuntimeError(f"{name}: device {device!r} is not available to {entry.framework} "
                           f"(it has {available})")
    return Subject(name, factory, backend, forms_of(factory, name))


def judge_in_process(names: Sequence[str], cases: Sequence[Case], options: Options,
                     weights=None) -> Iterator[tuple]:
    """Events: ("loaded", i, error_or_None), ("result", i, CheckResult),
    ("case_done", i, {"case": id, "seconds": time spent judging it}), and after every
    case, for each implementation with a failing check, ("diagnosis", i, [hypotheses]).

    Case-major: each case's oracle results are computed once for all implementations.
    ``weights``: (spec, arrays) from ``--weights``, used by the cases on that spec.
    """
    subjects = []
    for i, name in enumerate(names):
        try:
            subjects.append(load_subject(name, options.device))
            yield ("loaded", i, None)
        except Exception as exc:
            subjects.append(None)
            yield ("loaded", i, str(exc).strip() or type(exc).__name__)
    judged = [[] for _ in subjects]
    judged_cases = [[] for _ in subjects]   # each case in the call form it was judged in
    outputs = [{} for _ in subjects]    # the outputs of failing cases, for the diagnosis
    for case in cases:
        if not any(subjects):
            return
        refs: dict[str, object] = {}   # the oracle's side, once per case and call form
        for i, subject in enumerate(subjects):
            if subject is None:
                continue
            start = time.perf_counter()
            target = subject.case_for(case, options.seed)
            try:
                if target.id not in refs:
                    case_weights = (weights[1] if weights is not None and target.spec == weights[0]
                                    else None)
                    refs[target.id] = reference(target, case_weights, options.strict_fully_masked)
                results = judge_case(subject, target, refs[target.id], options,
                                     outputs[i] if options.diagnose else None)
            except Exception:  # a bug of the suite's own: report it, judge the others
                results = [CheckResult(target.id, "suite", "error", f"{subject.name} :: {target.id}: "
                                       f"the suite failed:\n{traceback.format_exc()}", target.tags)]
            seconds = time.perf_counter() - start
            judged[i] += results
            judged_cases[i].append(target)
            if not any(r.status in FAILING for r in results):
                outputs[i].pop(target.id, None)
            for result in results:
                yield ("result", i, result)
            yield ("case_done", i, {"case": target.id, "seconds": seconds})
    if options.diagnose:
        yield from diagnosis_events(subjects, judged_cases, judged, outputs, options, weights)


# ---------------------------------------------------------------------------------------
# Judging in one subprocess per framework (conformance/worker.py is the other end).

def _jax_cache_dir() -> Path:
    # Not the ".../attnsuite/jax" of earlier, uncapped runs: a capped cache keeps an access
    # time beside each entry, and fails every write in a folder with entries lacking one.
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_home / "attnsuite" / "jax-capped"


JAX_CACHE_MAX_BYTES = 256 * 2**20  # least recently used entries go beyond this


def _can_cap_jax_cache() -> bool:
    """JAX evicts from a capped cache under a lock from the ``filelock`` package, and
    raises at the first compile without it: no cap, no cache (it would grow unbounded)."""
    return importlib.util.find_spec("filelock") is not None


def _worker_env(entry: Entry, device: str) -> dict:
    env = dict(os.environ)
    env.update(entry.env)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if entry.framework == "jax" and "JAX_COMPILATION_CACHE_DIR" not in env and _can_cap_jax_cache():
        # A JAX worker spends most of its time compiling one small program per case (each
        # under JAX's 1 s threshold for caching): XLA's persistent cache lets a later run
        # skip every compile it has already done. A cache of the user's own is left as set.
        env["JAX_COMPILATION_CACHE_DIR"] = str(_jax_cache_dir())
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        env.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(JAX_CACHE_MAX_BYTES))
    if device == "cpu":  # a CPU run must not touch (or preallocate) a GPU
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif entry.framework == "jax":  # JAX takes 75% of the GPU at start: workers share one
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # Plug-in modules resolve from the caller's directory, as with `python -m`.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), str(REPO_ROOT),
                                                    env.get("PYTHONPATH")) if p)
    return env


def _run_worker(job: dict, env: dict, indices: list[int], events: queue.Queue,
                processes: list) -> None:
    """Run one worker, forwarding its events (with global indices) to ``events``; always
    ends with a "worker_exit" event, whatever happens to the worker."""
    code, tail = None, ""
    with tempfile.TemporaryFile("w+") as stderr:
        try:
            process = subprocess.Popen([sys.executable, "-m", "attnsuite.conformance.worker"], env=env,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=stderr, text=True, cwd=os.getcwd())
            processes.append(process)
            process.stdin.write(json.dumps(job))
            process.stdin.close()
            for line in process.stdout:
                event, local, payload = json.loads(line)
                if event == "result":
                    payload = CheckResult.from_dict(payload)
                events.put((event, indices[local], payload))
            code = process.wait()
        except Exception as exc:  # a garbled stream or a failed start: the group is lost
            tail = f"{type(exc).__name__}: {exc}"
        finally:
            stderr.seek(0)
            tail = (stderr.read()[-2000:].strip() + "\n" + tail).strip()
            events.put(("worker_exit", indices, (code, tail)))


def judge_isolated(names: Sequence[str], cases: Sequence[Case], options: Options,
                   weights_path=None, jobs: int | None = None) -> Iterator[tuple]:
    """The same events as judge_in_process, plus ("worker_exit", indices, (code, stderr))
    and ("tick", None, None) while nothing happens."""
    groups: dict[tuple, list[int]] = {}
    for i, name in enumerate(names):
        try:
            entry = find_entry(name)
        except Exception as exc:
            yield ("loaded", i, str(exc))
            continue
        groups.setdefault(entry.process_key, []).append(i)
    events: queue.Queue = queue.Queue()
    jobs = max(1, jobs or os.cpu_count() or 1)
    # A JAX implementation compiles a program per case, tens of seconds a profile against a
    # second or two to start a worker: its group is spread over the jobs. The others judge
    # a profile in about the time their framework takes to import, so they stay together.
    spread = []
    for key, indices in groups.items():
        parts = min(jobs, len(indices)) if key[0] == "jax" else 1
        spread += [(key, indices[part::parts]) for part in range(parts)]
    # Longest first (JAX compiles, TensorFlow builds graphs), so the last one to start is short.
    slowness = {"jax": 0, "tensorflow": 1, "torch": 2, "numpy": 3}
    pending = [indices for key, indices in sorted(spread, key=lambda kv: (
        slowness.get(kv[0][0], 0), -len(kv[1])))]
    running, processes = 0, []
    case_dicts = [c.to_dict() for c in cases]
    try:
        while pending or running:
            while pending and running < jobs:
                indices = pending.pop(0)
                job = {"names": [names[i] for i in indices], "cases": case_dicts,
                       "options": dataclasses.asdict(options),
                       "weights": None if weights_path is None else str(weights_path)}
                env = _worker_env(find_entry(names[indices[0]]), options.device)
                threading.Thread(target=_run_worker, daemon=True,
                                 args=(job, env, indices, events, processes)).start()
                running += 1
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                yield ("tick", None, None)      # frameworks still importing: keep the bar alive
                continue
            if event[0] == "worker_exit":
                running -= 1
            yield event
    finally:  # interrupted (Ctrl-C, or the caller stopped reading): no orphan workers
        for process in processes:
            if process.poll() is None:
                process.kill()


# ---------------------------------------------------------------------------------------
# The run.

def _git_commit() -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD") or None,
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(*, profile, dtypes, device, seed, strict_fully_masked, weights_path,
                weights_spec, cases) -> dict:
    packages = ("numpy", "ml_dtypes", "torch", "tensorflow", "tensorflow-cpu", "keras", "jax",
                "jaxlib", "flax")
    weights = None
    if weights_path is not None:
        digest = hashlib.sha256(Path(weights_path).read_bytes()).hexdigest()
        weights = {"path": str(weights_path), "sha256": digest, "spec": weights_spec.to_dict()}
    return {
        "suite": {"name": "attnsuite", "version": _version("attnsuite"), **_git_commit()},
        "frameworks": {p: v for p in packages if (v := _version(p)) is not None},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
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
                self.bar.update(self.task, description=text[:60])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def check(impls: Sequence[str], profile: str = "quick", dtypes: Iterable[str] | None = None,
          device: str = "cpu", weights=None, xfails=None, strict_fully_masked: bool = False,
          case_filter: str | Sequence[str] | Callable[[Case], bool] | None = None,
          isolate: bool = False, progress: bool = False, seed: int = 0,
          jobs: int | None = None, min_coverage: float | None = None,
          generated: int = 0, diagnose: bool = True) -> RunResult:
    """Judge every implementation on every selected case; see the module docstring.

    ``weights``: a ``--weights`` file path (see conformance.weights). ``xfails``: a path,
    lines, or an ``Xfails``. ``min_coverage``: a share of the checks (0 to 1) that an
    implementation must be judged on to pass (conformance.coverage). ``generated``: that
    many generated cases besides the profile's. ``diagnose``: name the likely bug of each
    failing implementation (``ImplResult.diagnosis``, conformance/diagnosis.py). Usage
    errors (unknown profile, dtype, case, unreadable weights or xfails file) raise
    ValueError before anything runs.
    """
    names = list(impls)
    dtypes = list(dtypes) if dtypes else None
    weights_spec, weights_arrays = load_weights(weights) if weights is not None else (None, None)
    cases = select_cases(profile, dtypes, case_filter, seed, weights_spec, generated)
    xfail_list = Xfails.coerce(xfails)
    options = Options(device, strict_fully_masked, None if weights is None else str(weights), seed,
                      diagnose)
    env = environment(profile=profile, dtypes=dtypes, device=device, seed=seed,
                      strict_fully_masked=strict_fully_masked, weights_path=weights,
                      weights_spec=weights_spec, cases=cases)

    results = [ImplResult(name) for name in names]
    for impl in results:
        try:
            entry = find_entry(impl.name)
            impl.framework, impl.kind = entry.framework, entry.kind
        except Exception:
            pass
    if isolate:
        events = judge_isolated(names, cases, options, weights, jobs)
    else:
        loaded = None if weights is None else (weights_spec, weights_arrays)
        events = judge_in_process(names, cases, options, loaded)

    bar = _Progress(progress, len(names) * len(cases))
    finished_cases = [0] * len(names)
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
            elif event == "diagnosis":
                results[index].diagnosis = payload
            elif event == "case_done":
                finished_cases[index] += 1
                results[index].seconds += payload["seconds"]
                bar.advance(f"{names[index]} {payload['case']}")
            elif event == "worker_exit":
                code, stderr = payload
                for i in index:
                    if results[i].reason is None and finished_cases[i] < len(cases):
                        last = stderr.splitlines()[-1] if stderr else "no output"
                        results[i].reason = (f"its process ended (exit code {code}) after "
                                             f"{finished_cases[i]} of {len(cases)} cases: {last}")
    finally:
        bar.close()
    warnings = xfail_list.unmatched()
    for impl in results:
        impl.finish(min_coverage)
        judged = impl.coverage()
        if impl.verdict == "pass" and judged.share < LOW_COVERAGE:
            warnings.append(f"{impl.name} passed, but on only {judged.describe()} "
                            f"(--min-coverage to require more)")
    return RunResult(results, list(cases), env, warnings)
