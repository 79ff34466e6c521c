"""Regenerate the checked-in report: the quick sweep of every implementation on this machine.

    python -m attnsuite.bench.make_report                      # -> reports/bench/
    python -m attnsuite.bench.make_report --agreement          # and re-time it independently
    python -m attnsuite.bench.make_report --out DIR --sweep default --threads 1

The sweep runs into a fresh directory, so the report is one run and not an accumulation;
the files then replace those in ``--out`` one by one (atomically), so an interrupted run
leaves the previous report whole. ``--agreement`` adds ``agreement.md``
(``python -m attnsuite.bench.agreement``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from attnsuite.bench import agreement, cli
from attnsuite.bench.environment import REPO_ROOT
from attnsuite.bench.sweeps import SWEEPS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnsuite.bench.make_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "bench")
    parser.add_argument("--sweep", choices=SWEEPS, default="quick")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--machine")
    parser.add_argument("--agreement", action="store_true", help="also write agreement.md")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent, prefix=".bench-") as fresh:
        bench_args = ["all", "--sweep", args.sweep, "--out", fresh]
        bench_args += ["--threads", str(args.threads)] if args.threads else []
        bench_args += ["--machine", args.machine] if args.machine else []
        status = cli.main(bench_args)
        if status != 0:
            return status
        if args.agreement:
            agreement.main([fresh])
        for stale in args.out.iterdir():  # files of an older report that this one lacks
            if stale.is_file() and not (Path(fresh) / stale.name).exists():
                stale.unlink()
        for produced in Path(fresh).iterdir():
            os.replace(produced, args.out / produced.name)
    print(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
