"""``attnsuite report DIR...`` for conformance reports: shards and machines merged into one.

    attnsuite report DIR [DIR ...] [--out DIR] [--junit-xml FILE] [--traceback] [-q]

Each DIR is a ``--report`` folder of ``attnsuite check`` (or its conformance.json). The
shards of one run (``--shard K/N``: the same implementations, profile, device, dtypes,
seed and case selection) are put back together: every case's results in the unsharded
order, verdicts recomputed from them as the run itself decides them (so an implementation
judged on nothing in one shard is not "untested" overall), the warnings of the whole run.
A run that is missing a shard, or has one twice, is a usage error. Other reports (another
machine's run, a GPU job) are added beside: an implementation judged in several of them
gets a row per run, labelled by device (or machine). The report keeps each input's
environment, and has one verdict and exit status, as ``attnsuite check``'s: 0 when every
implementation passes, 1 when one does not, 2 for a usage error; 130/143 when an input
run was interrupted. Folders of benchmark results go to the benchmark merge
(``attnsuite.bench.cli.report_main``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from attnsuite import sanitize
from attnsuite.conformance.cases import Case
from attnsuite.conformance.checks import CheckResult
from attnsuite.conformance.results import ImplResult, RunResult
from attnsuite.impls.calling import FORMS

REPORT_NAME = "conformance.json"
# What makes two shards parts of one run (besides the implementations and the shard count).
RUN_KEYS = ("profile", "device", "dtypes", "seed", "strict_fully_masked", "min_coverage", "xfail_strict")
SHARD_KEYS = ("index", "count", "positions", "cases_total", "selection")    # runner.check's


class MergeError(ValueError):
    """Inputs that cannot be merged: the message names the file or the missing shard."""


# ---------------------------------------------------------------------------------------
# Reading a report back.

def report_path(path) -> Path:
    path = Path(path)
    return path / REPORT_NAME if path.is_dir() else path


def is_conformance_report(path) -> bool:
    return report_path(path).is_file() and report_path(path).name == REPORT_NAME


def _number(value):
    """to_json writes inf and nan as strings."""
    return float(value) if value in ("inf", "-inf", "nan") else value


def _case(data: dict) -> Case:
    fields = {k: v for k, v in data.items() if k not in ("id", "tags")}
    case = Case.from_dict(fields)
    if case.id != data["id"]:
        raise MergeError(f"case {data['id']!r} reads back as {case.id!r}: written by another "
                         f"version of attnsuite")
    return case


def load_run(path) -> RunResult:
    """A RunResult from a conformance.json, as its run ended."""
    source = report_path(path)
    if Path(path).is_dir() and not source.is_file():
        raise MergeError(f"{path}: no {REPORT_NAME} there (not an attnsuite check --report folder)")
    try:
        data = json.loads(source.read_text())
        implementations = []
        for d in data["implementations"]:
            results = [CheckResult.from_dict({**r, "ratio": _number(r["ratio"])}) for r in d["results"]]
            implementations.append(ImplResult(d["name"], d["framework"], d["kind"], d["verdict"],
                                              d["reason"], results, d["seconds"], d["diagnosis"]))
        cases = [_case(c) for c in data["cases"]]
        shard = data.get("shard")
        if shard is not None:
            shard = {key: shard[key] for key in SHARD_KEYS}
        return RunResult(implementations, cases, data["environment"], data["warnings"],
                         data["interrupted"], shard)
    except OSError as exc:
        raise MergeError(f"{source}: {exc.strerror or exc}") from None
    except MergeError as exc:
        raise MergeError(f"{source}: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:   # JSONDecodeError is a ValueError
        raise MergeError(f"{source}: not a conformance report of attnsuite check "
                         f"({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------------------------------
# Merging.

def _run_key(run: RunResult) -> tuple:
    env, shard = run.environment, run.shard
    weights = (env.get("weights") or {}).get("sha256")
    return (tuple(i.name for i in run.implementations), shard["count"], shard["selection"], weights,
            *(json.dumps(env.get(k)) for k in RUN_KEYS))


def _describe(run: RunResult) -> str:
    env = run.environment
    return (f"{', '.join(i.name for i in run.implementations)}; profile {env.get('profile')}, "
            f"device {env.get('device')}, {run.shard['cases_total']} cases")


def _positions(cases: list[Case], seed: int) -> dict[str, int]:
    """Case id -> its position in the run, for the ids a case is judged under: its own, or
    the one it has moved into another call form (``Subject.case_for``)."""
    positions: dict[str, int] = {}
    for position, case in enumerate(cases):
        positions.setdefault(case.id, position)
    for position, case in enumerate(cases):
        for form in FORMS:
            try:
                positions.setdefault(case.in_form(form, seed).id, position)
            except ValueError:      # a form the case cannot take
                pass
    return positions


def _failing_cases(impl: ImplResult) -> int:
    return len({r.case_id for r in impl.failures()})


def _merge_shards(shards: list[tuple[str, RunResult]]) -> RunResult:
    """The shards of one run -> the run, as if judged unsharded."""
    from attnsuite.conformance.runner import low_coverage_warnings

    first = shards[0][1]
    count, total = first.shard["count"], first.shard["cases_total"]
    by_index: dict[int, str] = {}
    for source, run in shards:
        index = run.shard["index"]
        if index in by_index:
            raise MergeError(f"{by_index[index]} and {source} are both shard {index}/{count} "
                             f"of one run ({_describe(run)})")
        by_index[index] = source
    missing = sorted(set(range(1, count + 1)) - set(by_index))
    if missing:
        raise MergeError(f"shard {', '.join(f'{k}/{count}' for k in missing)} of the run "
                         f"({_describe(first)}) is missing; given: "
                         f"{', '.join(f'{k}/{count} ({s})' for k, s in sorted(by_index.items()))}")
    shards = sorted(shards, key=lambda s: s[1].shard["index"])
    cases: list[Case | None] = [None] * total
    for source, run in shards:
        positions = run.shard["positions"]
        if len(positions) != len(run.cases) or any(cases[p] is not None for p in positions):
            raise MergeError(f"{source}: its shard's cases do not fit the other shards'")
        for position, case in zip(positions, run.cases):
            cases[position] = case
    if any(case is None for case in cases):
        raise MergeError(f"the shards of the run ({_describe(first)}) do not cover its {total} cases")
    position_of = _positions(cases, first.environment.get("seed") or 0)
    min_coverage = first.environment.get("min_coverage")
    interrupted = next((run.interrupted for _, run in shards if run.interrupted), None)

    implementations = []
    for i, template in enumerate(first.implementations):
        parts = [run.implementations[i] for _, run in shards]
        impl = ImplResult(template.name, template.framework, template.kind)
        impl.results = sorted((r for part in parts for r in part.results),
                              key=lambda r: position_of.get(r.case_id, total))
        impl.seconds = sum(part.seconds for part in parts)
        errors = [part.reason for part in parts if part.verdict == "error"]
        impl.reason = errors[0] if errors else None
        impl.finish(min_coverage)
        if impl.verdict == "fail":   # the diagnosis of the shard with most failing cases
            diagnosed = [p for p in parts if p.diagnosis]
            if diagnosed:
                impl.diagnosis = max(diagnosed, key=_failing_cases).diagnosis
        cut_short = [p.reason for (_, run), p in zip(shards, parts)
                     if run.interrupted and p.verdict == "untested"]
        if cut_short and impl.verdict == "pass":
            impl.verdict, impl.reason = "untested", cut_short[0]
        implementations.append(impl)

    # A warning of the run itself (an xfail pattern that matched nothing) is in every
    # shard; the coverage warnings are the whole run's, recomputed.
    shard_warnings = [[w for w in run.warnings if w not in low_coverage_warnings(run.implementations)]
                      for _, run in shards]
    warnings = [w for w in shard_warnings[0] if all(w in other for other in shard_warnings[1:])]
    warnings += low_coverage_warnings(implementations)
    environment = dict(first.environment, cases=total)
    return RunResult(implementations, cases, environment, warnings, interrupted)


def _label_rows(runs: list[RunResult]) -> None:
    """Rows of an implementation judged in several runs get the run's device (or machine,
    or number) after their name."""
    seen: dict[str, list[int]] = {}
    for r, run in enumerate(runs):
        for impl in run.implementations:
            seen.setdefault(impl.name, []).append(r)
    for name, where in seen.items():
        if len(where) < 2:
            continue
        for label in (lambda r: runs[r].environment.get("device"),
                      lambda r: runs[r].environment.get("machine"), lambda r: f"run {r + 1}"):
            labels = [str(label(r)) for r in where]
            if len(set(labels)) == len(labels):
                break
        for r, text in zip(where, labels):
            for impl in runs[r].implementations:
                if impl.name == name:
                    impl.name = f"{name} [{text}]"


def _input_environment(source: str, run: RunResult) -> dict:
    shard = run.shard
    return {"source": source, "shard": f"{shard['index']}/{shard['count']}" if shard else None,
            **run.environment}


def merge(paths) -> RunResult:
    """The reports at ``paths`` (folders or conformance.json files) as one run."""
    if not paths:
        raise MergeError("no report to merge")
    loaded = [(str(path), load_run(path)) for path in paths]
    groups: dict[tuple, list[tuple[str, RunResult]]] = {}
    runs: list[RunResult] = []
    for source, run in loaded:
        if run.shard is None:
            runs.append(run)
            continue
        key = _run_key(run)
        if key not in groups:
            groups[key] = []
            runs.append(key)       # the merged shards take the place of the first one
        groups[key].append((source, run))
    runs = [_merge_shards(groups[r]) if isinstance(r, tuple) else r for r in runs]
    _label_rows(runs)

    cases: dict[str, Case] = {}
    for run in runs:
        cases.update((c.id, c) for c in run.cases if c.id not in cases)
    environment = dict(runs[0].environment, cases=len(cases),
                       inputs=[_input_environment(source, run) for source, run in loaded])
    warnings = list(dict.fromkeys(w for run in runs for w in run.warnings))
    interrupted = next((run.interrupted for run in runs if run.interrupted), None)
    return RunResult([impl for run in runs for impl in run.implementations], list(cases.values()),
                     environment, warnings, interrupted)


# ---------------------------------------------------------------------------------------
# The command.

BENCH_REPORT_HELP = """\
Folders of benchmark results (attnsuite bench --out DIR) are merged into one benchmark
report instead: attnsuite report DIR [DIR ...] [--out DIR] [--run ID [ID ...]]
[--drop-run ID [ID ...]] (--run: only these runs, ids or id prefixes; --drop-run: leave
these runs out)."""


def build_parser() -> argparse.ArgumentParser:
    from attnsuite.conformance.cli import _Parser

    paragraphs = __doc__.strip().split("\n\n")
    p = _Parser(prog="attnsuite report",
                description="Merge conformance reports of shards and machines into one report, "
                            "with one verdict.",
                epilog="\n\n".join(paragraphs[2:] + [BENCH_REPORT_HELP]),
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", metavar="DIR",
                   help="an attnsuite check --report folder (or its conformance.json)")
    p.add_argument("--out", default="out/report", metavar="DIR",
                   help="write DIR/conformance.json, .md and .html (default out/report)")
    p.add_argument("--junit-xml", metavar="FILE", help="write JUnit XML")
    p.add_argument("--traceback", action="store_true", help="print failure messages whole")
    p.add_argument("-q", "--quiet", action="store_true", help="print failures and the verdict only")
    return p


def main(argv: list[str] | None = None) -> int:
    from attnsuite.conformance import report
    from attnsuite.conformance.cli import _summary_lines, _UsageError, check_output_file

    try:
        args = build_parser().parse_args(argv)
        if args.junit_xml:
            check_output_file("--junit-xml", args.junit_xml)
        for path in args.dirs:
            if report_path(path).parent.resolve() == Path(args.out).resolve():
                raise _UsageError(f"--out {args.out}: is an input ({path}); write the merge elsewhere")
        run = merge(args.dirs)
        written = report.write_reports(run, args.out)
        if args.junit_xml:
            written.append(report.write_junit(run, args.junit_xml))
    except (_UsageError, MergeError, report.ReportBusy) as exc:
        print(f"attnsuite report: error: {sanitize.terminal(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"attnsuite report: error: {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:         # --help
        return int(exc.code or 0)
    for warning in run.warnings:
        print(f"attnsuite report: warning: {sanitize.terminal(warning)}", file=sys.stderr)
    lines = _summary_lines(run, args.quiet, args.traceback)
    if lines:
        print("\n".join(lines))
    if not args.quiet:
        print("\n".join(f"wrote {path}" for path in written))
    verdict = "PASS" if run.ok else "FAIL"
    if run.interrupted:
        verdict = f"INTERRUPTED ({run.interrupted}), so FAIL"
    print(f"{verdict}: {sum(i.verdict == 'pass' for i in run.implementations)} of "
          f"{len(run.implementations)} implementations pass ({len(run.cases)} cases, merged from "
          f"{len(args.dirs)} reports)")
    return run.exit_code


def report_main(argv: list[str] | None = None) -> int:
    """``attnsuite report``: conformance reports merged here, benchmark results by the bench."""
    argv = list(sys.argv[1:] if argv is None else argv)
    outputs = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--out", "--junit-xml")}
    inputs = [a for a in argv if not a.startswith("-") and a not in outputs]
    asks_help = "-h" in argv or "--help" in argv
    if any(is_conformance_report(a) for a in inputs) or (asks_help and not inputs):
        return main(argv)
    from attnsuite.bench.cli import report_main as bench_report_main
    return bench_report_main(argv)
