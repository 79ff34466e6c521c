"""``attnsuite check``: the conformance gate.

    attnsuite check IMPL [IMPL ...] [--profile quick|default|full] [--dtype D[,D]]
                    [--device cpu|gpu] [--report DIR] [--junit-xml FILE] [--weights FILE]
                    [--xfails FILE] [--xfail-strict] [--strict-fully-masked] [--case ID] [--seed N]
                    [--generated N] [--min-coverage P] [--no-diagnose] [--jobs N]
                    [--timeout SECONDS] [--shard K/N] [--traceback] [-q]

IMPL is a registered name (``attnsuite list``) or ``FRAMEWORK:module.path:factory``
(the module is found from the current directory, as with ``python -m``). All the
implementations of a run are judged in one process per framework (start-up paid once).

Exit status: 0 when every implementation passes (unsupported checks are not failures),
1 when any fails or errors (a plug-in that does not import is an error), 2 for a usage
error (unknown option, implementation name, case, unreadable --weights or --xfails, a
--report or --junit-xml place that cannot be written, a --report folder another run is
writing): usage errors are found before any implementation runs.
Ctrl-C or SIGTERM ends every process of the run and writes the reports asked for, marked
interrupted, with what was judged: exit status 130 (Ctrl-C) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from attnsuite import sanitize
from attnsuite.conformance.cases import DEFAULT_PROFILE, DTYPES, PROFILES
from attnsuite.conformance.pool import DEFAULT_TIMEOUT
from attnsuite.conformance.shards import parse_shard
from attnsuite.impls.registry import find_entry
from attnsuite.options import int_in
from attnsuite.processes import exit_status, interrupt_on_sigterm

SHOWN_FAILURES = sanitize.SHOWN_FAILURES_TERMINAL
SEED_LIMIT = 2**32      # case seeds are 32-bit


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own exit status for usage errors is 2 as well
        self.print_usage(sys.stderr)
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def _dtypes(text: str) -> list[str]:
    names = [d.strip() for d in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty dtype in {text!r} (one of {', '.join(DTYPES)})")
    unknown = [d for d in names if d not in DTYPES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown dtype {', '.join(unknown)} (one of {', '.join(DTYPES)})")
    return names


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_file(option: str, path: str) -> None:
    """A file the run will write: not a folder, in a place that can be written (probed by
    creating and removing a file there, which also holds for root and read-only mounts)."""
    target = Path(path)
    if target.is_dir():
        raise _UsageError(f"{option} {path}: is a directory, a file is wanted")
    folder = _nearest_existing(target.parent)
    if not folder.is_dir():
        raise _UsageError(f"{option} {path}: {folder} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".attnsuite-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _UsageError(f"{option} {path}: cannot write in {folder}: {exc.strerror or exc}") from None


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
    p.add_argument("--profile", choices=PROFILES, default=DEFAULT_PROFILE,
                   help=f"quick (seconds), default (every feature), full (every dtype, larger "
                        f"shapes); without --profile: {DEFAULT_PROFILE}")
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
                        "over IMPL::CASE_ID (the whole case) or IMPL::CASE_ID::CHECK")
    p.add_argument("--xfail-strict", action="store_true",
                   help="an xfail pattern whose check or case passes (XPASS) fails the run "
                        "(also: a line 'xfail_strict = true' in the xfails file)")
    p.add_argument("--strict-fully-masked", action="store_true",
                   help="rows with no visible key must follow the spec (zeros), or fail")
    p.add_argument("--case", action="append", metavar="ID",
                   help="only this case (any profile's id, or an fnmatch pattern); repeatable")
    p.add_argument("--seed", type=int_in(0, SEED_LIMIT), default=0,
                   help="shifts every case's seed (default 0)")
    p.add_argument("--jobs", type=int_in(1), default=None,
                   help="framework processes at once (default: cores + 1)")
    p.add_argument("--generated", type=int_in(0), default=0, metavar="N",
                   help="also N generated cases (drawn from --seed; each id carries its own "
                        "seed, so --case ID reproduces one)")
    p.add_argument("--min-coverage", type=_percent, metavar="P",
                   help="fail an implementation judged on less than P%% of the checks it was "
                        "given (default: only warn below 50%%)")
    p.add_argument("--no-diagnose", action="store_true",
                   help="do not look for the likely bug of a failing implementation")
    p.add_argument("--traceback", action="store_true",
                   help="print failure messages whole, with the traceback where an implementation raised")
    p.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"time one implementation may take on one case, then it is an error and "
                        f"its process is killed (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--shard", type=parse_shard, metavar="K/N",
                   help="judge only shard K of N of the cases (balanced, the same on every machine); "
                        "'attnsuite report DIR...' merges the shards' --report folders")
    p.add_argument("-q", "--quiet", action="store_true", help="print failures and the verdict only")
    return p


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 100:   # False for NaN as well
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage from 0 to 100")
    return value / 100


def _shown(message: str, full: bool) -> str:
    """A failure message for the terminal: cleaned, and cut to its first lines unless ``full``."""
    lines = sanitize.terminal(message).split("\n")
    limit = sanitize.TERMINAL_MESSAGE_LINES
    if full or len(lines) <= limit:
        return "\n".join(lines)
    return "\n".join(lines[:limit] + [f"  ... {len(lines) - limit} more lines (--traceback, or "
                                       f"--report DIR, shows them)"])


def _with_traceback(result, full: bool) -> str:
    trace = result.detail.get("traceback") if full and isinstance(result.detail, dict) else None
    return _shown(result.message + (f"\n{trace}" if trace else ""), full)


def print_and_write(run, prog: str, args) -> None:
    """A finished run's warnings and summary on the terminal, then its reports
    (``args.report``, ``args.junit_xml``; ``args.quiet``, ``args.traceback`` as in ``check``)."""
    from attnsuite.conformance import report

    for warning in run.warnings:
        print(f"{prog}: warning: {sanitize.terminal(warning)}", file=sys.stderr)
    lines = _summary_lines(run, args.quiet, args.traceback)
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


def _summary_lines(run, quiet: bool, full: bool = False) -> list[str]:
    from attnsuite.conformance.diagnosis import cause_lines
    from attnsuite.conformance.results import worst_ratio

    lines = []
    width = max(len(impl.name) for impl in run.implementations)
    for impl in run.implementations:
        counts = impl.counts()
        shown = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing judged"
        worst = worst_ratio(impl.results)
        worst_text = f", worst ratio {worst:.3g}" if worst is not None else ""
        if not quiet or impl.verdict != "pass":
            lines.append(f"{impl.verdict.upper():5} {impl.name:{width}}  {shown}{worst_text}, "
                         f"{impl.coverage().percent()} judged ({impl.seconds:.1f}s)")
        if impl.reason:
            lines.append(f"      {_shown(impl.reason, full)}")
        lines += [f"      {sanitize.terminal(line)}" for line in cause_lines(impl)]
    for impl in run.implementations:
        failures = impl.failures()
        for r in failures[:SHOWN_FAILURES]:
            lines += ["", _with_traceback(r, full)]
        if len(failures) > SHOWN_FAILURES:
            lines += ["", f"{impl.name}: {len(failures) - SHOWN_FAILURES} more failures "
                      f"(--report DIR for all of them)"]
        xpasses = [r for r in impl.results if r.status == "xpass"]
        if not quiet:
            for r in xpasses[:SHOWN_FAILURES]:
                lines += ["", _shown(r.message, full)]
            if len(xpasses) > SHOWN_FAILURES:
                lines += ["", f"{impl.name}: and {len(xpasses) - SHOWN_FAILURES} more XPASS "
                          f"(--report DIR for all of them)"]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    from attnsuite.conformance import report

    lock = None
    try:
        args = parser.parse_args(argv)
        for name in args.impls:       # a misspelt name is a usage error; a broken module is not
            find_entry(name)
        if args.junit_xml:
            check_output_file("--junit-xml", args.junit_xml)
        if args.report:
            if Path(args.report).exists() and not Path(args.report).is_dir():
                raise _UsageError(f"--report {args.report}: is a file, a directory is wanted")
            try:
                lock = report.ReportLock(args.report).acquire()
            except OSError as exc:
                raise _UsageError(f"--report {args.report}: cannot write there: "
                                  f"{exc.strerror or exc}") from None
    except (_UsageError, ValueError, report.ReportBusy) as exc:   # ValueError: a PluginError
        print(f"attnsuite check: error: {sanitize.terminal(str(exc))}", file=sys.stderr)
        return 2
    except SystemExit as exc:         # --help
        return int(exc.code or 0)
    try:
        return _run(args)
    finally:
        if lock is not None:
            lock.release()


def _first_line(args) -> str:
    """What the run is: its profile (saying so when it is the default one) and its scope."""
    profile = args.profile
    if profile == DEFAULT_PROFILE:
        profile += " (the default; --profile default for every feature)"
    return (f"attnsuite check: {len(args.impls)} implementation{'s' * (len(args.impls) != 1)}, "
            f"profile {profile}, device {args.device}, seed {args.seed}")


def _run(args) -> int:
    from attnsuite.conformance.runner import check

    dtypes = [d for group in args.dtype for d in group] if args.dtype else None
    progress = None if args.quiet else ("bar" if sys.stderr.isatty() else "lines")
    if not args.quiet:
        print(_first_line(args), flush=True)
    try:
        with interrupt_on_sigterm():
            run = check(args.impls, profile=args.profile, dtypes=dtypes, device=args.device,
                        weights_path=args.weights, xfails=args.xfails,
                        strict_fully_masked=args.strict_fully_masked, case_filter=args.case,
                        isolate=True, progress=progress, seed=args.seed, jobs=args.jobs,
                        timeout=args.timeout, min_coverage=args.min_coverage,
                        generated=args.generated, diagnose=not args.no_diagnose, shard=args.shard,
                        xfail_strict=args.xfail_strict)
    except ValueError as exc:
        print(f"attnsuite check: error: {sanitize.terminal(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:    # before any judging began: nothing to report
        print("attnsuite check: interrupted", file=sys.stderr)
        return exit_status(exc)
    print_and_write(run, "attnsuite check", args)
    verdict = "PASS" if run.ok else "FAIL"
    if run.interrupted:
        verdict = f"INTERRUPTED ({run.interrupted}), so FAIL"
    shard = f"shard {args.shard[0]}/{args.shard[1]}, " if args.shard else ""
    print(f"{verdict}: {sum(i.verdict == 'pass' for i in run.implementations)} of "
          f"{len(run.implementations)} implementations pass ({len(run.cases)} cases, "
          f"{shard}profile {args.profile})")
    return run.exit_code
