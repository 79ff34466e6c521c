"""The pytest face (conformance/pytest_plugin.py): ``pytest --attnsuite-impl IMPL`` runs one
test per implementation x case x check and one verdict test per implementation, with the
outcomes ``attnsuite check`` gives, and does nothing at all without ``--attnsuite-impl``.

Each run is a pytest subprocess in a folder outside the checkout, with ``-p`` naming the
plug-in (the entry point is installed only by a (re)install; tests/test_examples.py runs
a real one)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from attnsuite.conformance import cli
from gate_faces import RECORDER_MODULE, expected_outcomes, gate_outcomes, recorder_env, verdicts

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = "attnsuite.conformance.pytest_plugin"
NAIVE = "numpy:tests.plugins.numpy_impls:naive"


def _pytest(tmp_path, *args, env=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", "-p", PLUGIN, "-p", "no:cacheprovider", "-q", *args]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)


def test_one_test_per_check_with_the_outcomes_of_attnsuite_check(tmp_path, capsys):
    impls = ["numpy.oracle", NAIVE]
    options = ["--dtype", "float32,float64"]
    outcomes = tmp_path / "outcomes.json"
    env = recorder_env(tmp_path / "recorder", outcomes)
    named = [a for name in impls for a in ("--attnsuite-impl", name)]
    done = _pytest(tmp_path, "-p", RECORDER_MODULE, *named, "--attnsuite-dtype", "float32,float64",
                   "--attnsuite-report", str(tmp_path / "plugin"), env=env)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert cli.main([*impls, *options, "--report", str(tmp_path / "cli"), "-q"]) == 1
    capsys.readouterr()

    expected = expected_outcomes(tmp_path / "cli" / "conformance.json")
    got = gate_outcomes(outcomes)
    assert got == expected
    failed = {n for n, outcome in got.items() if outcome == "failed"}
    # Only the naive softmax fails, on the large logits, and its verdict with it.
    assert failed and all(f"::{NAIVE}::" in n and ("stress_large_logits" in n or n.endswith("::verdict"))
                          for n in failed), failed
    assert f"attnsuite::{NAIVE}::verdict" in failed
    assert "reproduce: attnsuite check " + NAIVE + " --case" in done.stdout
    # The same report writer: the same verdicts and counts in both reports.
    plugin_report, cli_report = tmp_path / "plugin" / "conformance.json", tmp_path / "cli" / "conformance.json"
    assert verdicts(plugin_report) == verdicts(cli_report)
    assert "FAIL: 1 of 2 implementations pass" in done.stdout


def test_xfails_turn_failures_into_xfail_and_the_verdict_passes(tmp_path):
    (tmp_path / "xfails.txt").write_text(
        f"{NAIVE}::*stress_large_logits*::output  # the naive softmax overflows\n"
        f"{NAIVE}::*-B2-Lq5-Lk5-float64::output  # passes: an XPASS\n")
    outcomes = tmp_path / "outcomes.json"
    done = _pytest(tmp_path, "-p", RECORDER_MODULE, "--attnsuite-impl", NAIVE, "--attnsuite-xfails",
                   "xfails.txt", "--attnsuite-case", "*-B2-Lq5-Lk5-*",
                   env=recorder_env(tmp_path / "recorder", outcomes))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    got = gate_outcomes(outcomes)
    assert {n for n, o in got.items() if o == "xfailed"} == {
        n for n in got if "stress_large_logits" in n and n.endswith("::output")}
    xpassed = [n for n, o in got.items() if o == "xpassed"]
    assert xpassed == [f"attnsuite::{NAIVE}::mha2-E8-B2-Lq5-Lk5-float64::output"]
    assert got[f"attnsuite::{NAIVE}::verdict"] == "passed"

    strict = _pytest(tmp_path, "-p", RECORDER_MODULE, "--attnsuite-impl", NAIVE, "--attnsuite-xfails",
                     "xfails.txt", "--attnsuite-case", "*-B2-Lq5-Lk5-*", "--attnsuite-xfail-strict",
                     env=recorder_env(tmp_path / "recorder", outcomes))
    assert strict.returncode == 1, strict.stdout[-3000:] + strict.stderr[-3000:]
    got = gate_outcomes(outcomes)
    assert got[xpassed[0]] == "failed" and got[f"attnsuite::{NAIVE}::verdict"] == "failed"


def test_an_implementation_judged_on_nothing_fails_its_verdict_test(tmp_path):
    outcomes = tmp_path / "outcomes.json"
    done = _pytest(tmp_path, "-p", RECORDER_MODULE, "--attnsuite-impl", "numpy.oracle", "--attnsuite-dtype",
                   "float16", env=recorder_env(tmp_path / "recorder", outcomes))
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    got = gate_outcomes(outcomes)
    assert got.pop("attnsuite::numpy.oracle::verdict") == "failed"
    assert got and set(got.values()) == {"skipped"}
    assert "UNTESTED numpy.oracle" in done.stdout and "nothing judged" in done.stdout


def test_without_attnsuite_impl_the_plugin_collects_and_imports_nothing(tmp_path):
    (tmp_path / "test_probe.py").write_text(
        "import sys\n\n"
        "def test_probe():\n"
        "    loaded = sorted(m for m in sys.modules if m.split('.')[0] in\n"
        "                    ('attnsuite', 'ml_dtypes', 'torch', 'tensorflow', 'jax'))\n"
        f"    assert loaded == ['attnsuite', 'attnsuite.conformance', {PLUGIN!r}], loaded\n")
    done = _pytest(tmp_path, "test_probe.py")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 passed" in done.stdout


def test_usage_errors_stop_pytest_before_anything_runs(tmp_path):
    for args, message in [(["--attnsuite-impl", "numpy.nonesuch"], "numpy.nonesuch"),
                          (["--attnsuite-impl", "numpy.oracle", "--attnsuite-profile", "huge"], "huge"),
                          (["--attnsuite-impl", "numpy.oracle", "--attnsuite-case", "nothing-*"],
                           "nothing-*"),
                          (["--attnsuite-impl", "numpy.oracle", "--attnsuite-xfails", "missing.txt"],
                           "missing.txt")]:
        done = _pytest(tmp_path, *args)
        assert done.returncode == 4, (args, done.stdout[-2000:], done.stderr[-2000:])
        assert message in done.stderr and "attnsuite" in done.stderr, done.stderr


def test_xdist_is_refused_with_the_reason(tmp_path):
    pytest.importorskip("xdist")
    done = _pytest(tmp_path, "-n", "2", "--attnsuite-impl", "numpy.oracle")
    assert done.returncode == 4 and "without pytest-xdist's -n" in done.stderr, done.stderr[-2000:]


def test_the_entry_point_is_the_module_pytest_p_names():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {PLUGIN: PLUGIN}
