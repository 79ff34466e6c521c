"""Run a sweep: one worker process per framework, records appended as they stream in.

Frameworks never share a process (JAX preallocates GPU memory, TensorFlow grabs it all,
thread pools fight), and a worker that dies or hangs costs one point, not the sweep: its
in-flight point is recorded as ``crashed`` or ``timeout`` and a fresh worker carries on
with the points left.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Callable, Iterable

from attnsuite import sanitize
from attnsuite.bench import environment, store
from attnsuite.bench.flops import PASSES
from attnsuite.bench.records import new_record
from attnsuite.bench.sweeps import Budget, Config, Point, compile_modes
from attnsuite.impls.backends import FRAMEWORKS, framework_status
from attnsuite.impls.errors import PluginError
from attnsuite.impls.registry import REGISTRY, find_entry
from attnsuite.processes import Exit, Worker, worker_env

# Environment each framework's process gets, whatever the caller's.
FRAMEWORK_ENV = {
    "jax": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
    "tensorflow": {"TF_CPP_MIN_LOG_LEVEL": "2"},
}
# A worker's first message also waits for its framework's import (TensorFlow: seconds).
STARTUP_ALLOWANCE = 60.0
Progress = Callable[[str, Any], None]   # ("start", Point) or ("record", dict)


def expand_names(names: Iterable[str]) -> list[str]:
    """``all`` stands for every registered implementation."""
    out = []
    for name in names:
        out.extend(e.name for e in REGISTRY) if name == "all" else out.append(name)
    return list(dict.fromkeys(out))


def plan(names: list[str], configs: list[Config], compile: list[str]):
    """Group the points by process: ``[((framework, env), [Point])]``, and the names that
    do not resolve, with why.

    Entries of one framework share a process unless their environments conflict: an entry
    that needs ``KERAS_BACKEND=torch`` can run beside the plain PyTorch ones (each process
    start costs seconds), not beside one that needs another value.
    """
    groups: list[tuple[str, dict, list[Point]]] = []
    unresolved: dict[str, tuple[str, str]] = {}
    for name in expand_names(names):
        try:
            entry = find_entry(name)
        except PluginError as exc:
            unresolved[name] = ("?", str(exc))
            continue
        points = [Point(entry.name, c, mode) for mode in compile_modes(entry.framework, compile)
                  for c in configs]
        env = dict(entry.env)
        for framework, group_env, group_points in groups:
            if framework == entry.framework and all(group_env.get(k, v) == v for k, v in env.items()):
                group_env.update(env)
                group_points.extend(points)
                break
        else:
            groups.append((entry.framework, env, points))
    groups.sort(key=lambda group: FRAMEWORKS.index(group[0]))
    # Configuration-major: the implementations of a group take turns at each shape, so a
    # drift of the machine's speed over the run touches them alike, and a shape's inputs
    # are drawn once for all of them (bench.case caches the last draw).
    order = {config: i for i, config in enumerate(configs)}
    for _, _, group_points in groups:
        group_points.sort(key=lambda point: order[point.config])
    return [((framework, tuple(sorted(env.items()))), points) for framework, env, points in groups], unresolved


def thread_env(framework: str, threads: int | None) -> dict[str, str]:
    """Environment that caps a framework's CPU threads (read at import, so set before it)."""
    if threads is None:
        return {}
    env = {name: str(threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    if framework == "jax" and threads == 1:  # XLA:CPU has no thread-count flag, only on/off
        env["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"),
                                                  "--xla_cpu_multi_thread_eigen=false",
                                                  "intra_op_parallelism_threads=1"]))
    return env


class Runner:
    def __init__(self, out_dir, budget: Budget, *, machine: str | None = None,
                 threads: int | None = None, progress: Progress | None = None):
        self.out_dir = out_dir
        self.budget = budget
        self.threads = threads
        self.run_id = uuid.uuid4().hex[:12]
        self.env = dict(environment.collect(machine), run_id=self.run_id, threads=threads)
        self.progress = progress or (lambda event, payload: None)
        self.records: list[dict] = []
        self.writer = store.RunWriter.for_store(out_dir, self.run_id, self.env)

    def _store(self, record: dict) -> None:
        record = self.writer.append(record)
        self.records.append(record)
        self.progress("record", record)

    def _fail(self, point: Point, framework: str, status: str, reason: str, passes=PASSES) -> None:
        for pass_ in passes:
            self._store(new_record(point, pass_, status, run_id=self.run_id, env=self.env,
                                   framework=framework, reason=reason))

    def run(self, names: list[str], configs: list[Config], compile: list[str]) -> list[dict]:
        groups, unresolved = plan(names, configs, compile)
        for name, (framework, reason) in unresolved.items():
            for config in configs:
                point = Point(name, config, "eager")
                self.progress("start", point)
                self._fail(point, framework, "error", reason)
        for (framework, extra_env), points in groups:
            available, reason = framework_status(framework)
            if not available:
                for point in points:
                    self.progress("start", point)
                    self._fail(point, framework, "unavailable", reason)
                continue
            self._run_group(framework, dict(extra_env), points)
        return self.records

    # --- one framework's worker, restarted after a crash or a time-out ----------------
    def _run_group(self, framework: str, extra_env: dict, points: list[Point]) -> None:
        pending = list(points)
        while pending:
            pending = self._run_worker(framework, extra_env, pending)

    def _worker_env(self, framework: str, extra_env: dict, device: str) -> dict:
        return worker_env({**FRAMEWORK_ENV.get(framework, {}), **thread_env(framework, self.threads),
                           **extra_env}, device)

    def _run_worker(self, framework: str, extra_env: dict, points: list[Point]) -> list[Point]:
        """Run ``points`` in one worker; return those left when it died or hung. Leaving,
        however (Ctrl-C, SIGTERM, a time limit), kills the worker's process group."""
        job = {"framework": framework, "points": [p.to_dict() for p in points],
               "budget": vars(self.budget), "run_id": self.run_id, "threads": self.threads,
               "env": dict(self.env, env_vars=dict(self.env["env_vars"], **thread_env(framework, self.threads),
                                         **extra_env))}
        device = points[0].config.device
        # Plug-in modules resolve from the caller's directory, as in `attnsuite check`.
        with Worker("attnsuite.bench.worker", job, self._worker_env(framework, extra_env, device),
                    cwd=os.getcwd()) as worker:
            return self._follow(worker, framework, points)

    def _follow(self, worker: Worker, framework: str, points: list[Point]) -> list[Point]:
        """Store the worker's records as they come; return the points left when it died or hung."""
        index, recorded = -1, set()
        while True:
            timeout = self.budget.point_timeout + (STARTUP_ALLOWANCE if index == -1 else 0)
            try:
                message = worker.receive(timeout)
            except TimeoutError:
                worker.close()
                return self._abandon(framework, points, index, recorded, "timeout",
                                     f"no result within {timeout:.0f} s; worker killed")
            if isinstance(message, Exit):
                tail = " | ".join(message.stderr.strip().splitlines()[-3:])
                return self._abandon(framework, points, index, recorded, "crashed",
                                     f"worker exited with {message.code}: {sanitize.one_line(tail[-sanitize.SUMMARY_CHARS:])}")
            if message["event"] == "start":
                index, recorded = message["index"], set()
                self.progress("start", points[index])
            elif message["event"] == "record":
                recorded.add(message["record"]["pass"])
                self._store(message["record"])
            elif message["event"] == "done":
                return []

    def _abandon(self, framework, points, index, recorded, status, reason) -> list[Point]:
        """Record the in-flight point as ``status``; drop the larger sizes of its series."""
        if index == -1:  # died before its first point: nothing will ever run
            for point in points:
                self.progress("start", point)
                self._fail(point, framework, status, reason)
            return []
        failed = points[index]
        if recorded >= set(PASSES):  # it died between points: the next one starts afresh
            return points[index + 1:]
        self._fail(failed, framework, status, reason, [p for p in PASSES if p not in recorded])
        left = []
        for point in points[index + 1:]:
            if point.series == failed.series and point.area >= failed.area:
                self.progress("start", point)
                self._fail(point, framework, "over_budget",
                           f"skipped: L_q={failed.config.L_q} of this series ended {status}")
            else:
                left.append(point)
        return left

