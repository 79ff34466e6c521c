"""Worker processes that speak JSON lines: the gate's, the benchmark's and ``attnsuite list``'s.

The parent starts ``python -P -m MODULE`` in a process group of its own, writes one JSON
job on its stdin and reads one JSON message per line from its stdout; the worker's stderr
goes to a file whose tail says why it died. ``-P`` keeps the current directory off the
worker's import path: a ``json.py`` or an ``impls/`` there shadows nothing (plug-in
modules are found by ``attnsuite.impls.registry``, which looks there last). The worker's
end is ``worker_channel()``.

A worker is always ended by killing its whole process group (``os.killpg``): whatever a
plug-in started ends with it, when the worker finishes, crashes, is given up on, or when
the run is interrupted. ``interrupt_on_sigterm()`` turns SIGTERM into an exception like
Ctrl-C's, so that the parent's ``finally`` blocks run and kill them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# The checkout (or site-packages) holding the attnsuite package: a worker imports the
# suite from where its parent did.
SUITE_ROOT = Path(__file__).resolve().parent.parent
STDERR_TAIL = 4000          # characters of a worker's stderr kept to explain its end
_EOF = object()
_POLL = 0.25                # seconds between looks at a worker that may have died
_LINGER = 2.0               # after the worker died, how long its pipe may stay open


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM: the run ends its processes and keeps what it has."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signal.Signals(signum)


def interrupt_signal(exc: KeyboardInterrupt) -> signal.Signals:
    """The signal behind an interrupt: SIGTERM through ``interrupt_on_sigterm``, else SIGINT."""
    return getattr(exc, "signum", signal.SIGINT)


def exit_status(exc: KeyboardInterrupt) -> int:
    """The shell's convention: 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + interrupt_signal(exc)


@contextlib.contextmanager
def interrupt_on_sigterm():
    """While inside, SIGTERM raises ``Interrupted(SIGTERM)`` in the main thread, as Ctrl-C
    raises KeyboardInterrupt (Python's default for SIGTERM is to die at once, leaving the
    workers running)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


@dataclasses.dataclass(frozen=True)
class Exit:
    """How a worker ended: its exit status (negative: the signal) and its stderr's tail."""
    code: int | None
    stderr: str

    def describe(self) -> str:
        return describe_exit(self.code)

    def last_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else "no output"


def worker_env(extra: dict[str, str] | None = None, device: str | None = None) -> dict[str, str]:
    """The caller's environment, plus ``extra``; the suite importable as the parent has it
    (the current directory is not added); a CPU run hides the GPUs."""
    env = dict(os.environ)
    env.update(extra or {})
    if (SUITE_ROOT / "pyproject.toml").is_file():   # a checkout, not an installed package
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SUITE_ROOT), env.get("PYTHONPATH")]))
    if device == "cpu":  # a CPU run must not touch (or preallocate) a GPU
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _command(module: str, args: tuple[str, ...]) -> list[str]:
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", module, *args]
    # Python 3.10 has no -P: drop the current directory ('' for -c) before anything imports.
    boot = (f"import sys; del sys.path[0]; import runpy; "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", boot, *args]


class Worker:
    """One worker process: ``python -P -m module *args``, the job on its stdin.

    ``receive(timeout)`` gives its messages one by one, then one ``Exit``. Use it as a
    context manager: leaving the block kills the worker's process group, whatever happened.
    """

    def __init__(self, module: str, job, env: dict[str, str], args: tuple[str, ...] = (),
                 cwd: str | None = None):
        self._stderr = tempfile.TemporaryFile("w+")
        self._messages: queue.Queue = queue.Queue()
        self.exit: Exit | None = None
        self.process = subprocess.Popen(_command(module, args),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self._stderr, text=True, env=env, cwd=cwd,
                                        start_new_session=True)   # its own process group
        try:
            threading.Thread(target=self._pump, daemon=True).start()
            try:
                self.process.stdin.write(json.dumps(job))
                self.process.stdin.close()
            except OSError:
                pass    # it died at once (a broken pipe): its Exit says why
        except BaseException:   # Ctrl-C before the caller holds it: not left running
            self.close()
            raise

    def _pump(self) -> None:
        for line in self.process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                self._messages.put(json.loads(line))
            except json.JSONDecodeError:    # not the protocol's: left to stderr's account
                continue
        self._messages.put(_EOF)

    def receive(self, timeout: float | None = None):
        """The next message, or the ``Exit`` once the worker has ended (its group killed);
        TimeoutError when no message came within ``timeout`` seconds."""
        if self.exit is not None:
            return self.exit
        deadline = None if timeout is None else time.monotonic() + timeout
        died = None
        while True:
            wait = _POLL if deadline is None else min(_POLL, deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError(f"no message within {timeout:.0f} s")
            try:
                message = self._messages.get(timeout=wait)
            except queue.Empty:
                if self.process.poll() is not None:
                    # Dead, but a child of its may hold the pipe open: end the group; a
                    # child that left the group (setsid) cannot keep us waiting long.
                    self.kill()
                    died = died or time.monotonic()
                    if time.monotonic() - died > _LINGER:
                        return self._finish()
                continue
            if message is _EOF:
                return self._finish()
            return message

    def kill(self) -> None:
        """Kill the worker's whole process group (safe to call from any thread, and twice)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _finish(self) -> Exit:
        self.kill()     # whatever the worker left running
        code = self.process.wait()
        self._stderr.seek(0)
        tail = self._stderr.read()[-STDERR_TAIL:]
        self._stderr.close()
        self.exit = Exit(code, tail)
        return self.exit

    def close(self) -> Exit:
        if self.exit is None:
            self.kill()
            self.process.wait()
            self._finish()
        return self.exit

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def worker_channel(default=None):
    """The worker's end: ``(job, emit)``. ``emit(message)`` writes one JSON line on the
    original stdout; everything else printed (by frameworks, by plug-ins) goes to stderr,
    so the channel stays parseable."""
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    job = json.load(sys.stdin)

    def emit(message) -> None:
        channel.write(json.dumps(message, default=default) + "\n")
        channel.flush()

    return job, emit
