"""Regenerate the checked-in conformance report from a clean tree.

    python -m attnsuite.conformance.make_report            # -> reports/conformance/

Runs the gate on every registered implementation with the default profile and writes
``conformance.md`` and ``conformance.html`` (``conformance.json`` too, which git ignores:
generated data stays out of the repository). The report names the commit it was made
from; a tree with uncommitted changes is refused, so that commit is the whole truth
(``tests/test_committed_reports.py`` holds the committed report to it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnsuite.conformance import cli
from attnsuite.environment import uncommitted_changes
from attnsuite.impls.registry import REGISTRY
from attnsuite.processes import SUITE_ROOT

REPORT_DIR = SUITE_ROOT / "reports" / "conformance"
PROFILE = "default"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnsuite.conformance.make_report",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPORT_DIR)
    args = parser.parse_args(argv)
    changed = uncommitted_changes()
    if changed is None:
        print("make_report: run it in a git checkout of attnsuite: the report names its commit",
              file=sys.stderr)
        return 2
    if changed:
        print(f"make_report: commit first; uncommitted changes in {', '.join(changed)}",
              file=sys.stderr)
        return 2
    status = cli.main([entry.name for entry in REGISTRY] + ["--profile", PROFILE,
                                                            "--report", str(args.out), "-q"])
    return 0 if status in (0, 1) else status   # 1: some built-in does not conform, as known


if __name__ == "__main__":
    sys.exit(main())
