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
import subprocess
import sys
from pathlib import Path

from attnsuite.conformance import cli
from attnsuite.impls.registry import REGISTRY

REPO_ROOT = Path(__file__).resolve().parent.parent
REPORT_DIR = REPO_ROOT / "reports" / "conformance"
PROFILE = "default"


def uncommitted_changes() -> list[str]:
    """Tracked files that differ from HEAD."""
    status = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain",
                             "--untracked-files=no"], capture_output=True, text=True, check=True)
    return [line[3:] for line in status.stdout.splitlines()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnsuite.conformance.make_report",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPORT_DIR)
    args = parser.parse_args(argv)
    changed = uncommitted_changes()
    if changed:
        print(f"make_report: commit first; uncommitted changes in {', '.join(changed)}",
              file=sys.stderr)
        return 2
    status = cli.main([entry.name for entry in REGISTRY] + ["--profile", PROFILE,
                                                            "--report", str(args.out), "-q"])
    return 0 if status in (0, 1) else status   # 1: some built-in does not conform, as known


if __name__ == "__main__":
    sys.exit(main())
