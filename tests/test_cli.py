"""The top-level command: dispatch, --help, --version, usage errors."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from attnsuite.cli import SUBCOMMANDS, main

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnsuite", *args], capture_output=True,
                          text=True, timeout=120)


def test_help_names_every_subcommand_and_bench_compare():
    done = _run("--help")
    assert done.returncode == 0, done.stderr
    for name in SUBCOMMANDS:
        assert f"    {name} " in done.stdout, (name, done.stdout)
    assert "attnsuite bench compare BASE CAND" in done.stdout


def test_version_is_the_projects():
    done = _run("--version")
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert done.returncode == 0 and done.stdout.startswith(f"attnsuite {expected}"), done


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["--no-such-option"]])
def test_a_usage_error_exits_2(argv, capsys):
    assert main(argv) == 2
    assert "usage: attnsuite" in capsys.readouterr().err


def test_a_subcommand_gets_its_own_arguments(capsys):
    assert main(["check", "--help"]) == 0
    assert "usage: attnsuite check" in capsys.readouterr().out


def test_bench_help_shows_bench_compare():
    done = _run("bench", "--help")
    assert done.returncode == 0, done.stderr
    assert "attnsuite bench compare BASE CAND" in done.stdout
    compare = _run("bench", "compare", "--help")
    assert compare.returncode == 0 and "--threshold" in compare.stdout and "--interleaved" in compare.stdout


def test_check_help_names_the_default_profile():
    from attnsuite.conformance.cases import DEFAULT_PROFILE
    done = _run("check", "--help")
    assert done.returncode == 0, done.stderr
    assert f"without --profile: {DEFAULT_PROFILE}" in " ".join(done.stdout.split())
