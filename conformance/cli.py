"""``attnsuite check``: the conformance gate.

    attnsuite check IMPL [IMPL ...] [--profile quick|default|full] [--dtype D[,D]]
                    [--device cpu|gpu] [--report DIR] [--junit-xml FILE] [--weights FILE]
                    [--xfails FILE] [--strict-fully-masked] [--case ID] [--seed N]
                    [--timeout SECONDS] [-q]

IMPL is a registered name (``attnsuite list``) or ``FRAMEWORK:module.path:factory``
(the module is found from the current directory, as with ``python -m``). All the
implementations of a run are judged in one process per framework (start-up paid once).

Exit status: 0 when every implementation passes (unsupported checks are not failures),
1 when any fails or errors (a plug-in that does not import is an error), 2 for a usage
error (unknown option, implementation name, case, unreadable --weights or --xfails).
Ctrl-C or SIGTERM ends every process of the run and writes the reports asked for, marked
interrupted, with what was judged: exit status 130 (Ctrl-C) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import sys

from attnsuite.conformance.cases import DTYPES, PROFILES
from attnsuite.conformance.pool import DEFAULT_TIMEOUT
from attnsuite.impls.registry import find_entry
from attnsuite.processes import exit_status, interrupt_on_sigterm

SHOWN_FAILURES = 5


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own exit status for usage errors is 2 as well
        self.print_usage(sys.stderr)
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def _dtypes(text: str) -> list[str]:
    names = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in names if d not in DTYPES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown dtype {', '.join(unknown)} (one of {', '.join(DTYPES)})")
    return names


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"--timeout must be a positive number of seconds, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    paragraphs = __doc__.strip().split("\n\n")
    p = _Parser(prog="attnsuite check",
                description="The conformance gate: implementations judged against the float64 oracle.",
                epilog="\n\n".join(paragraphs[2:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("impls", nargs="+", metavar="IMPL",
                   help="registered name or FRAMEWORK:module.path:factory")
    p.add_argument("--profile", choices=PROFILES, default="quick",
                   help="quick (seconds), default (every feature), full (every dtype, larger shapes)")
    p.add_argument("--dtype", type=_dtypes, action="append", metavar="D[,D]",
                   help=f"only these dtypes ({', '.join(DTYPES)}); repeatable")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--report", metavar="DIR",
                   help="write DIR/conformance.json, .md and .html")
    p.add_argument("--junit-xml", metavar="FILE", help="write JUnit XML")
    p.add_argument("--weights", metavar="FILE",
                   help="trained weights (.npz or .safetensors with a spec; see conformance/weights.py)")
    p.add_argument("--xfails", metavar="FILE",
                   help="expected failures: lines 'PATTERN  # reason', PATTERN an fnmatch "
                        "over IMPL::CASE_ID::CHECK")
    p.add_argument("--strict-fully-masked", action="store_true",
                   help="rows with no visible key must follow the spec (zeros), or fail")
    p.add_argument("--case", action="append", metavar="ID",
                   help="only this case (any profile's id, or an fnmatch pattern); repeatable")
    p.add_argument("--seed", type=int, default=0, help="shifts every case's seed (default 0)")
    p.add_argument("--jobs", type=int, default=None, help="framework processes at once (default: cores)")
    p.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"time one implementation may take on one case, then it is an error and "
                        f"its process is killed (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("-q", "--quiet", action="store_true", help="print failures and the verdict only")
    return p


def _summary_lines(run, quiet: bool) -> list[str]:
    lines = []
    width = max(len(impl.name) for impl in run.implementations)
    for impl in run.implementations:
        counts = impl.counts()
        shown = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing judged"
        worst = max((r.ratio for r in impl.results if r.ratio is not None and r.status != "unsupported"),
                    default=None)
        worst_text = f", worst ratio {worst:.3g}" if worst is not None else ""
        if not quiet or impl.verdict != "pass":
            lines.append(f"{impl.verdict.upper():5} {impl.name:{width}}  {shown}{worst_text} "
                         f"({impl.seconds:.1f}s)")
        if impl.reason:
            lines.append(f"      {impl.reason}")
    for impl in run.implementations:
        failures = impl.failures()
        for r in failures[:SHOWN_FAILURES]:
            lines += ["", r.message]
        if len(failures) > SHOWN_FAILURES:
            lines += ["", f"{impl.name}: {len(failures) - SHOWN_FAILURES} more failures "
                      f"(--report DIR for all of them)"]
        if not quiet:
            for r in impl.results:
                if r.status == "xpass":
                    lines += ["", r.message]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        for name in args.impls:       # a misspelt name is a usage error; a broken module is not
            find_entry(name)
    except (_UsageError, ValueError) as exc:   # ValueError: a PluginError from find_entry
        print(f"attnsuite check: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:         # --help
        return int(exc.code or 0)

    from attnsuite.conformance import report
    from attnsuite.conformance.runner import check

    dtypes = [d for group in args.dtype for d in group] if args.dtype else None
    progress = not args.quiet and sys.stderr.isatty()
    try:
        with interrupt_on_sigterm():
            run = check(args.impls, profile=args.profile, dtypes=dtypes, device=args.device,
                        weights_path=args.weights, xfails=args.xfails,
                        strict_fully_masked=args.strict_fully_masked, case_filter=args.case,
                        isolate=True, progress=progress, seed=args.seed, jobs=args.jobs,
                        timeout=args.timeout)
    except ValueError as exc:
        print(f"attnsuite check: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:    # before any judging began: nothing to report
        print("attnsuite check: interrupted", file=sys.stderr)
        return exit_status(exc)
    for warning in run.warnings:
        print(f"attnsuite check: warning: {warning}", file=sys.stderr)
    lines = _summary_lines(run, args.quiet)
    if lines:
        print("\n".join(lines))
    if args.report:
        for path in report.write_reports(run, args.report):
            if not args.quiet:
                print(f"wrote {path}")
    if args.junit_xml:
        report.write_junit(run, args.junit_xml)
        if not args.quiet:
            print(f"wrote {args.junit_xml}")
    verdict = "PASS" if run.ok else "FAIL"
    if run.interrupted:
        verdict = f"INTERRUPTED ({run.interrupted}), so FAIL"
    print(f"{verdict}: {sum(i.verdict == 'pass' for i in run.implementations)} of "
          f"{len(run.implementations)} implementations pass ({len(run.cases)} cases, "
          f"profile {args.profile})")
    return run.exit_code
