"""Progress off a terminal (a CI log): plain lines on stderr, one every
``sanitize.PROGRESS_EVERY`` steps and one per implementation done; the run's first line
names its profile."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from attnsuite import sanitize
from attnsuite.conformance.cases import DEFAULT_PROFILE
from attnsuite.conformance.progress import Progress

ROOT = Path(__file__).resolve().parent.parent


def test_lines_every_n_steps_and_one_per_implementation_done():
    log = io.StringIO()
    every = sanitize.PROGRESS_EVERY
    bar = Progress("lines", 2 * every + 3, stream=log)
    for step in range(2 * every + 3):
        bar.advance(f"impl case-{step}")
    bar.finished("impl", "53 cases, 0 failing checks")
    lines = log.getvalue().splitlines()
    assert len(lines) == 3
    assert f"{every} of {2 * every + 3} implementation x case steps: impl case-{every - 1}" in lines[0]
    assert f"{2 * every} of" in lines[1]
    assert lines[2].endswith("impl done: 53 cases, 0 failing checks")
    assert all(line.startswith("attnsuite check: [") for line in lines)


def test_a_jump_of_many_steps_is_one_line_and_nothing_shows_without_a_mode():
    log = io.StringIO()
    Progress("lines", 500, stream=log).advance("impl: did not load", 5 * sanitize.PROGRESS_EVERY)
    assert len(log.getvalue().splitlines()) == 1
    quiet = io.StringIO()
    silent = Progress(None, 10, stream=quiet)
    silent.advance("x", 10)
    silent.finished("impl", "done")
    assert quiet.getvalue() == ""


def test_a_run_into_a_log_prints_progress_lines_and_names_the_default_profile(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "attnsuite", "check", "numpy.oracle",
                           "numpy:tests.plugins.broken_import:factory"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    first = done.stdout.splitlines()[0]
    assert f"profile {DEFAULT_PROFILE} (the default" in first and "2 implementations" in first
    progress = [line for line in done.stderr.splitlines() if line.startswith("attnsuite check: [")]
    assert any("numpy.oracle done: " in line and "cases, 0 failing checks" in line for line in progress)
    assert any("broken_import:factory done: error:" in line for line in progress)
    assert any("implementation x case steps" in line for line in progress)
