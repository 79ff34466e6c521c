"""``attnsuite``: one entry point, one subcommand per job.

    attnsuite list                 every registered implementation and whether it can run here
    attnsuite check IMPL [...]     the conformance gate (see conformance/cli.py)
    attnsuite bench IMPL [...]     the benchmark harness (see bench/cli.py)
    attnsuite report DIR [...]     merge benchmark results into one report

Exit status: 0 success, 1 a failed check or regression, 2 a usage error.
"""

from __future__ import annotations

import importlib
import sys

_SUBCOMMANDS = {
    "list": ("attnsuite.impls.listing", "main"),
    "check": ("attnsuite.conformance.cli", "main"),
    "bench": ("attnsuite.bench.cli", "main"),
    "report": ("attnsuite.bench.cli", "report_main"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in _SUBCOMMANDS:
        print(f"attnsuite: unknown command {command!r}; one of {', '.join(_SUBCOMMANDS)}",
              file=sys.stderr)
        return 2
    module_name, function = _SUBCOMMANDS[command]
    return int(getattr(importlib.import_module(module_name), function)(rest) or 0)
