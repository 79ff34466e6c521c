"""Judging in worker processes (``attnsuite.conformance.worker`` runs ``judging`` there).

One worker per framework (``entry.process_groups``: the Keras entries need
``KERAS_BACKEND`` set before import, and the framework's other entries take it along; a
JAX group is spread over up to ``jobs`` of them), at most ``jobs`` at once, each streaming
its events back as JSON lines (``attnsuite.processes``): start-up is paid once per framework.

A worker says which implementation it is about to run before it runs it. When it dies
(an ``os._exit``, a segfault) or one implementation overruns ``timeout`` seconds on a case,
that implementation is lost with the reason (its signal or exit code, or the time limit),
the worker's process group is killed, and a fresh worker carries on with the others from
where they were: they are judged as if nothing had happened.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import queue
import threading
from pathlib import Path
from typing import Iterator, Sequence

from attnsuite.conformance.cases import Case
from attnsuite.conformance.checks import CheckResult, Options
from attnsuite.files import cache_home
from attnsuite.impls.backends.common import QUICK_XLA_CPU_OPTIONS, xla_flags
from attnsuite.impls.entry import Entry, process_groups
from attnsuite.impls.registry import find_entry
from attnsuite.processes import Exit, Worker, worker_env

WORKER_MODULE = "attnsuite.conformance.worker"
DEFAULT_TIMEOUT = 120.0     # seconds per implementation and case (--timeout)
# A worker's own start (Python, NumPy, the oracle's results) and each implementation's
# import (its framework's: seconds, more on a busy machine) may take this on top.
STARTUP_ALLOWANCE = 60.0
JAX_CACHE_MAX_BYTES = 256 * 2**20  # least recently used entries go beyond this


def _jax_cache_dir() -> Path:
    # Not the ".../attnsuite/jax" of earlier, uncapped runs: a capped cache keeps an access
    # time beside each entry, and fails every write in a folder with entries lacking one.
    return cache_home() / "jax-capped"


def _can_cap_jax_cache() -> bool:
    """JAX evicts from a capped cache under a lock from the ``filelock`` package, and
    raises at the first compile without it: no cap, no cache (it would grow unbounded)."""
    return importlib.util.find_spec("filelock") is not None


# Variables the gate sets for a framework's workers on a device, each unless the user set it
# (reported in the run's environment: ``worker_settings``).
# - JAX: what the adapter's own programs compile with, for every program of the worker: the
#   behaviour checks' eager calls compile each operation, and an implementation's own jit
#   (a decode step per cache length) a program per shape, all run once or twice.
# - torch: one thread. Its operations here are small, and on every core torch's idle
#   OpenMP threads spin between them, against the run's other workers (two thirds of a
#   torch worker's CPU time on a busy machine, and its wall time slower too).
GATE_SETTINGS = {("jax", "cpu"): {"XLA_FLAGS": xla_flags(QUICK_XLA_CPU_OPTIONS)},
                 ("torch", "cpu"): {"OMP_NUM_THREADS": "1"}}


def worker_settings(frameworks, device: str) -> dict:
    """Per framework, each variable the gate sets for its workers with its value and who
    set it (the user, where their own is kept), for the report."""
    settings = {}
    for framework in sorted(set(frameworks)):
        for name, value in GATE_SETTINGS.get((framework, device), {}).items():
            ours = name not in os.environ
            settings.setdefault(framework, {})[name] = {
                "value": value if ours else os.environ[name],
                "set_by": "attnsuite check" if ours else "the user"}
    return settings


def _worker_env(entry: Entry, device: str, group_env: dict | None = None) -> dict:
    """The environment of a worker for ``entry`` (and the entries ``process_groups`` puts
    with it, whose environment is ``group_env``)."""
    env = worker_env(dict(entry.env) if group_env is None else dict(group_env), device)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if entry.framework == "jax" and "JAX_COMPILATION_CACHE_DIR" not in env and _can_cap_jax_cache():
        # A JAX worker spends most of its time compiling one small program per case (each
        # under JAX's 1 s threshold for caching): XLA's persistent cache lets a later run
        # skip every compile it has already done. A cache of the user's own is left as set.
        env["JAX_COMPILATION_CACHE_DIR"] = str(_jax_cache_dir())
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        env.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(JAX_CACHE_MAX_BYTES))
    for name, value in GATE_SETTINGS.get((entry.framework, device), {}).items():
        env.setdefault(name, value)
    if device != "cpu" and entry.framework == "jax":  # JAX takes 75% of the GPU at start: workers share one
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return env


class _Workers:
    """The run's live workers: none starts once the run is stopping, and stopping kills all."""

    def __init__(self):
        self.lock = threading.Lock()
        self.live: set[Worker] = set()
        self.stopping = False

    def start(self, job: dict, env: dict) -> Worker | None:
        with self.lock:
            if self.stopping:
                return None
            worker = Worker(WORKER_MODULE, job, env, cwd=os.getcwd())
            self.live.add(worker)
            return worker

    def done(self, worker: Worker) -> None:
        with self.lock:
            self.live.discard(worker)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            live = list(self.live)
        for worker in live:
            worker.kill()
        for worker in live:   # reaped, so that no process of the run is left, not even a zombie
            worker.process.wait()


@dataclasses.dataclass
class _Part:
    """One worker's share of the run, carried over to a fresh worker when one is lost."""
    indices: list[int]                      # positions in the run's names
    next_case: dict[int, int]               # the case each implementation is at
    finished: set[int] = dataclasses.field(default_factory=set)

    def todo(self) -> list[int]:
        return [i for i in self.indices if i not in self.finished]


def _judge_part(part: _Part, names, cases, job_base: dict, env: dict, timeout: float,
                events: queue.Queue, workers: _Workers) -> None:
    """Judge one part, in as many workers as it takes; every event goes to ``events``."""
    while part.todo():
        todo = part.todo()
        job = dict(job_base, names=[names[i] for i in todo],
                   first_case=[part.next_case[i] for i in todo])
        try:
            worker = workers.start(job, env)
        except OSError as exc:    # no process could be started (out of memory, of PIDs)
            _lost(part, None, len(cases), events, f"no worker process could start ({exc})", Exit(None, ""))
            return
        if worker is None:
            return
        try:
            _follow(worker, part, todo, len(cases), timeout, events)
        finally:
            worker.close()
            workers.done(worker)


def _follow(worker: Worker, part: _Part, todo: list[int], n_cases: int, timeout: float,
            events: queue.Queue) -> None:
    """Forward one worker's events until it ends; on a death or a time-out, mark whom it
    was running as lost (or, with no one running, every implementation still to judge)."""
    running: tuple[int, str | None] | None = None        # (index, case id; None: its import)
    while True:
        judging = running is not None and running[1] is not None
        limit = timeout if judging else timeout + STARTUP_ALLOWANCE
        try:
            message = worker.receive(limit)
        except TimeoutError:
            worker.kill()
            end = worker.close()
            _lost(part, running, n_cases, events,
                  f"no answer within {limit:.0f} s (--timeout {timeout:g}); its process was killed", end)
            return
        if isinstance(message, Exit):
            if part.todo():
                _lost(part, running, n_cases, events, f"its process died ({message.describe()})",
                      message)
            return
        event, local, payload = message
        index = todo[local]
        if event == "start":
            running = (index, payload)
            continue
        running = None if event in ("loaded", "case_done") else running
        if event == "loaded" and (payload is not None or n_cases == 0):
            part.finished.add(index)
        elif event == "case_done":
            part.next_case[index] += 1
            if part.next_case[index] >= n_cases:
                part.finished.add(index)
        elif event == "result":
            payload = CheckResult.from_dict(payload)
        events.put((event, index, payload))


def _lost(part: _Part, running, n_cases: int, events: queue.Queue, why: str,
          end: Exit) -> None:
    last = f": {end.last_line()}" if end.stderr.strip() else ""
    if running is None:   # between implementations: the worker's own fault, nobody to blame
        for index in part.todo():
            events.put(("lost", index, f"{why} after {part.next_case[index]} of {n_cases} cases{last}"))
            part.finished.add(index)
        return
    index, case_id = running
    where = f"on case {case_id}" if case_id is not None else "while importing it"
    events.put(("lost", index, f"{why} {where}{last}"))
    part.finished.add(index)


def judge_isolated(names: Sequence[str], cases: Sequence[Case], options: Options,
                   weights_path=None, jobs: int | None = None,
                   timeout: float = DEFAULT_TIMEOUT) -> Iterator[tuple]:
    """The events of ``judging.judge_in_process`` (but "start"), plus ("lost", i, reason)
    for an implementation its worker lost, and ("tick", None, None) while nothing happens."""
    entries: dict[int, Entry] = {}
    for i, name in enumerate(names):
        try:
            entries[i] = find_entry(name)
        except Exception as exc:
            yield ("loaded", i, str(exc))
    # One worker more than the CPUs: a worker waits part of the time (its pipe, the compile
    # cache on disk), and the extra one fills those gaps (measured on 2 CPUs, every
    # registered implementation on the default profile: 120 -> 111 s with an empty JAX
    # compile cache, 56 -> 53 s with it filled).
    jobs = max(1, jobs or (os.cpu_count() or 1) + 1)
    # A JAX implementation compiles a program per case, tens of seconds a profile against a
    # second or two to start a worker: its group is spread over the jobs. The others judge
    # a profile in about the time their framework takes to import, so they stay together.
    positions = list(entries)
    spread = []
    for env, members in process_groups([entries[i] for i in positions]):
        indices = [positions[m] for m in members]
        framework = entries[indices[0]].framework
        parts = min(jobs, len(indices)) if framework == "jax" else 1
        spread += [(framework, env, indices[part::parts]) for part in range(parts)]
    # Longest first (JAX compiles, TensorFlow builds graphs), so the last one to start is short.
    slowness = {"jax": 0, "tensorflow": 1, "torch": 2, "numpy": 3}
    pending = [(env, indices) for framework, env, indices in sorted(
        spread, key=lambda part: (slowness.get(part[0], 0), -len(part[2])))]
    job_base = {"cases": [c.to_dict() for c in cases], "options": dataclasses.asdict(options),
                "weights_path": None if weights_path is None else str(weights_path)}
    events: queue.Queue = queue.Queue()
    workers = _Workers()
    running = 0

    def run_part(indices: list[int], env: dict) -> None:
        try:
            _judge_part(_Part(indices, dict.fromkeys(indices, 0)), names, cases, job_base, env,
                        timeout, events, workers)
        finally:
            events.put(("part_done", None, None))

    try:
        while pending or running:
            while pending and running < jobs:
                group_env, indices = pending.pop(0)
                env = _worker_env(entries[indices[0]], options.device, group_env)
                threading.Thread(target=run_part, args=(indices, env), daemon=True).start()
                running += 1
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                yield ("tick", None, None)      # frameworks still importing: keep the bar alive
                continue
            if event[0] == "part_done":
                running -= 1
                continue
            yield event
    finally:  # interrupted (Ctrl-C, SIGTERM, or the caller stopped reading): no worker left
        workers.stop()
