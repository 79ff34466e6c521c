"""The gate under attack by its plug-ins: each test makes the attack, then checks that the
gate held.

- the current directory shadows nothing: a ``json.py`` there never runs, a user's own
  ``impls/`` or ``conformance/`` package breaks nothing;
- a worker that dies (``os._exit``, SIGSEGV, SIGKILL; on a call or at import) costs only
  the implementation that killed it, named with the exit code or signal; a fresh worker
  judges the others, exactly as in a run without it;
- ``--timeout``: a hanging call (or import) is an error naming the limit, and the rest is
  judged;
- SIGTERM and Ctrl-C end every process of ``attnsuite check`` and ``attnsuite bench``,
  even a helper process a plug-in started (checked by process group), and ``check``
  writes a partial report marked interrupted, exit 143 / 130.

The hostile plug-ins are NumPy modules written to ``tmp_path`` (the oracle plus the
attack): they are tested here rather than in ``impls/broken``, whose ``Expect`` describes
wrong numbers a check must catch, not processes that die or hang.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from attnsuite.conformance import pool
from attnsuite.conformance.runner import check

ROOT = Path(__file__).resolve().parent.parent
F32 = ["float32"]
# As the `attnsuite` console script starts: the current directory not on the import path.
ATTNSUITE = [sys.executable, "-P", "-m", "attnsuite"]

HOSTILE = textwrap.dedent('''
    """Attacks on the gate: the oracle, plus one thing a hostile plug-in does."""
    import json, os, signal, subprocess, sys, time
    from pathlib import Path

    from attnsuite.impls import oracle

    def _with(spec, action):
        inner = oracle.factory(spec)

        def fn(params, query, key, value, mask=None, bias=None):
            action()
            return inner(params, query, key, value, mask, bias)

        def vjp(*args, **kwargs):
            action()
            return inner.vjp(*args, **kwargs)
        fn.vjp = vjp
        return fn

    def correct(spec):
        return oracle.factory(spec)

    def exits(spec):
        return _with(spec, lambda: os._exit(3))

    def segfaults(spec):
        return _with(spec, lambda: os.kill(os.getpid(), signal.SIGSEGV))

    def kills_itself(spec):
        return _with(spec, lambda: os.kill(os.getpid(), signal.SIGKILL))

    def exits_on_causal(spec):
        """Judged correctly on the cases without a causal mask, then dies."""
        return exits(spec) if spec.causal else correct(spec)

    def hangs(spec):
        return _with(spec, lambda: time.sleep(600))

    def _start_helper_and_hang():
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        started = {"helper": helper.pid, "pid": os.getpid(), "pgid": os.getpgid(0)}
        Path(os.environ["ATTNSUITE_TEST_STARTED"]).write_text(json.dumps(started))
        time.sleep(600)

    def hangs_with_helper(spec):
        return _with(spec, _start_helper_and_hang)
''')


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """A directory holding the hostile plug-ins, made the current one (workers resolve
    plug-in modules from there)."""
    (tmp_path / "hostile.py").write_text(HOSTILE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _outcome(impl) -> tuple:
    return (impl.verdict, impl.reason,
            [(r.case_id, r.check, r.status, r.message, r.ratio) for r in impl.results])


def _assert_judged_as_alone(run, names, **options):
    """The good implementations of ``run`` got exactly what a run of them alone gets."""
    alone = check(names, isolate=True, **options)
    got = {impl.name: impl for impl in run.implementations}
    for impl in alone.implementations:
        assert impl.verdict == "pass", (impl.name, impl.reason)
        assert _outcome(got[impl.name]) == _outcome(impl), impl.name


# ---------------------------------------------------------------------------------------
# The current directory shadows nothing.

def test_the_current_directory_shadows_neither_the_standard_library_nor_the_suite(tmp_path):
    marker = tmp_path / "json_py_ran"
    (tmp_path / "json.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                      "raise ImportError('the json.py of the current directory ran')\n")
    for shadow in ("conformance", "bench"):        # a user's own packages named like the suite's
        (tmp_path / shadow).mkdir()
        (tmp_path / shadow / "__init__.py").write_text(f"raise ImportError('user {shadow} imported')\n")
    (tmp_path / "impls").mkdir()                    # ... and one holding the user's plug-in
    (tmp_path / "impls" / "__init__.py").write_text("")
    (tmp_path / "impls" / "mine.py").write_text("from attnsuite.impls.oracle import factory\n")
    (tmp_path / "hostile.py").write_text(HOSTILE)
    names = ["numpy.oracle", "numpy:impls.mine:factory", "numpy:hostile:correct"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([*ATTNSUITE, "check", *names, "--dtype", "float32",
                           "--report", str(tmp_path / "report")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "conformance.json").read_text())
    assert {i["name"]: i["verdict"] for i in report["implementations"]} == dict.fromkeys(names, "pass")
    assert not marker.exists(), "a worker imported the json.py of the current directory"


def test_the_parent_resolves_a_plug_in_from_the_current_directory_last(plugins, monkeypatch):
    """In this process too: the plug-in's own module comes from the current directory, the
    directory joins the import path at its end."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(plugins))])
    run = check(["numpy:hostile:correct"], dtypes=F32, case_filter="mha*")
    assert run.implementations[0].verdict == "pass", run.implementations[0].reason
    assert sys.path[-1] == str(plugins)


# ---------------------------------------------------------------------------------------
# Crashes.

def test_a_crashing_plug_in_costs_only_itself(plugins):
    good = ["numpy.oracle", "numpy:hostile:correct"]
    attacks = {"numpy:hostile:exits": "exit code 3", "numpy:hostile:segfaults": "signal SIGSEGV",
               "numpy:hostile:kills_itself": "signal SIGKILL"}
    names = [good[0], *attacks, good[1]]
    run = check(names, isolate=True, dtypes=F32)
    by_name = {impl.name: impl for impl in run.implementations}
    first_case = run.cases[0].id
    for name, how in attacks.items():
        impl = by_name[name]
        assert impl.verdict == "error", (name, impl.verdict)
        assert how in impl.reason and first_case in impl.reason, impl.reason
    assert run.exit_code == 1
    _assert_judged_as_alone(run, good, dtypes=F32)


def test_a_plug_in_that_dies_late_keeps_what_was_judged_and_the_rest_goes_on(plugins):
    name, good = "numpy:hostile:exits_on_causal", ["numpy.oracle", "numpy:hostile:correct"]
    run = check([good[0], name, good[1]], isolate=True, dtypes=F32)
    impl = run.implementations[1]
    causal = [c.id for c in run.cases if c.spec.causal]
    assert impl.verdict == "error" and "exit code 3" in impl.reason and causal[0] in impl.reason
    judged = {r.case_id for r in impl.results}
    assert judged and not judged & set(causal), "results of the cases before the crash are kept"
    _assert_judged_as_alone(run, good, dtypes=F32)


def test_a_plug_in_that_dies_at_import_is_named(plugins):
    (plugins / "dies_at_import.py").write_text("import os\nos._exit(5)\n")
    run = check(["numpy:dies_at_import:factory", "numpy.oracle"], isolate=True, dtypes=F32,
                case_filter="mha*")
    impl, oracle = run.implementations
    assert impl.verdict == "error" and "exit code 5" in impl.reason and "import" in impl.reason
    assert oracle.verdict == "pass" and oracle.results


# ---------------------------------------------------------------------------------------
# Time limits.

def test_a_hanging_call_is_an_error_naming_the_time_limit(plugins):
    good = ["numpy.oracle", "numpy:hostile:correct"]
    began = time.monotonic()
    run = check([good[0], "numpy:hostile:hangs", good[1]], isolate=True, dtypes=F32, timeout=3)
    assert time.monotonic() - began < 60, "the gate waited on the hanging call"
    impl = run.implementations[1]
    assert impl.verdict == "error" and "--timeout 3" in impl.reason, impl.reason
    assert run.cases[0].id in impl.reason
    _assert_judged_as_alone(run, good, dtypes=F32)


def test_a_hanging_import_is_an_error_too(plugins, monkeypatch):
    (plugins / "hangs_at_import.py").write_text("import time\ntime.sleep(600)\n")
    monkeypatch.setattr(pool, "STARTUP_ALLOWANCE", 1.0)
    run = check(["numpy:hangs_at_import:factory", "numpy.oracle"], isolate=True, dtypes=F32,
                case_filter="mha*", timeout=3)
    impl, oracle = run.implementations
    assert impl.verdict == "error" and "--timeout 3" in impl.reason and "import" in impl.reason
    assert oracle.verdict == "pass" and oracle.results


# ---------------------------------------------------------------------------------------
# Signals: every process of the run ends, the report says it was interrupted.

def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def _assert_gone(*pgids: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = {pgid: _group_members(pgid) for pgid in pgids}
        if not any(left.values()):
            return
        time.sleep(0.2)
    for pid in (pid for members in left.values() for pid in members):
        os.kill(pid, signal.SIGKILL)    # not to outlive the test
    pytest.fail(f"processes of the run remain: {left}")


def _interrupt(command: list[str], cwd: Path, signum: int) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``attnsuite COMMAND`` (in a session of its own) until a plug-in has started its
    helper and hangs, then send ``signum`` as a terminal's Ctrl-C (to the foreground
    process group) or ``kill`` (to the process) does. Returns the finished command and
    the process groups of the run: the command's own and the plug-in's worker's."""
    started = cwd / "started.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), ATTNSUITE_TEST_STARTED=str(started))
    process = subprocess.Popen([*ATTNSUITE, *command], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not started.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert started.exists(), "the plug-in never ran: " + process.communicate(timeout=60)[1][-3000:]
        time.sleep(0.5)     # the file is written; the plug-in now sleeps
        if signum == signal.SIGINT:
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signum)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    plugin = json.loads(started.read_text())
    assert plugin["pgid"] == plugin["pid"] != process.pid, "the worker leads a process group of its own"
    groups = {"command": process.pid, "worker": plugin["pgid"]}
    return subprocess.CompletedProcess(process.args, process.returncode, out, err), groups


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_check_interrupted_ends_every_process_and_reports_what_was_judged(tmp_path, signum, status):
    (tmp_path / "hostile.py").write_text(HOSTILE)
    names = ["numpy.oracle", "numpy:hostile:hangs_with_helper"]
    done, groups = _interrupt(["check", *names, "--dtype", "float32", "--report", "report",
                               "--junit-xml", "junit.xml"], tmp_path, signum)
    assert done.returncode == status, done.stdout[-2000:] + done.stderr[-2000:]
    _assert_gone(*groups.values())
    report = json.loads((tmp_path / "report" / "conformance.json").read_text())
    assert report["interrupted"] == signal.Signals(signum).name and report["ok"] is False
    oracle = report["implementations"][0]
    assert oracle["results"] and oracle["verdict"] == "untested" and "interrupted" in oracle["reason"]
    assert "INTERRUPTED" in (tmp_path / "report" / "conformance.md").read_text()
    assert (tmp_path / "junit.xml").stat().st_size > 0


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_bench_interrupted_ends_every_process(tmp_path, signum, status):
    (tmp_path / "hostile.py").write_text(HOSTILE)
    done, groups = _interrupt(["bench", "numpy:hostile:hangs_with_helper", "--threads", "1",
                               "--out", "bench"], tmp_path, signum)
    assert done.returncode == status, done.stdout[-2000:] + done.stderr[-2000:]
    assert "interrupted" in done.stderr
    _assert_gone(*groups.values())


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "soon"])
def test_a_timeout_that_is_no_positive_number_is_a_usage_error(value, capsys):
    from attnsuite.conformance.cli import main

    assert main(["numpy.oracle", "--timeout", value]) == 2
    assert "--timeout" in capsys.readouterr().err
