"""``attnsuite``: one entry point, one subcommand per job.

Each subcommand has its own options (``attnsuite check --help``); this module only
dispatches, importing the subcommand's module when it is asked for.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
import tomllib
from pathlib import Path

# name -> (module, function, one line for --help)
SUBCOMMANDS = {
    "list": ("attnsuite.impls.listing", "main",
             "every registered implementation: whether it runs here, what it supports"),
    "check": ("attnsuite.conformance.cli", "main",
              "the conformance gate: implementations judged against the float64 oracle"),
    "port": ("attnsuite.conformance.port", "main",
             "check a port of one attention layer with its checkpoint: source and targets side by side"),
    "bench": ("attnsuite.bench.cli", "main",
              "the benchmark harness; 'attnsuite bench compare BASE CAND' flags regressions"),
    "report": ("attnsuite.conformance.merge", "report_main",
               "merge conformance reports of shards or machines (or benchmark results) into one report"),
}
EXIT_STATUS = "Exit status: 0 success, 1 a failed check or a regression, 2 a usage error."


def version() -> str:
    """The installed distribution's version, or the checkout's pyproject.toml's."""
    try:
        return importlib.metadata.version("attnsuite")
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["version"] + " (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnsuite", epilog=EXIT_STATUS,
        description="One attention spec, checked against a float64 oracle and timed across "
                    "TensorFlow, PyTorch and JAX.")
    parser.add_argument("--version", action="version", version=f"attnsuite {version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, _, summary) in SUBCOMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:   # the subcommand parses its own options
        module_name, function, _ = SUBCOMMANDS[argv[0]]
        return int(getattr(importlib.import_module(module_name), function)(argv[1:]) or 0)
    try:
        build_parser().parse_args(argv)   # --help, --version, or a usage error
    except SystemExit as exc:
        return int(exc.code or 0)
    return 2
