"""``attnsuite bench`` and ``attnsuite report``.

    attnsuite bench IMPL [IMPL ...] [--sweep quick|default|long] [--dtype D ...]
                    [--device cpu|gpu] [--compile MODE ...] [--out DIR] [--machine NAME]
                    [--threads N]
    attnsuite bench compare BASE CAND [--threshold 0.1] [--json FILE]
    attnsuite bench compare --interleaved BASE_IMPL CAND_IMPL [--sweep ...] [--threads N] [--rounds N]
                            [--max-time SECONDS] [--out DIR]
    attnsuite report DIR [DIR ...] [--out DIR] [--run ID ...] [--drop-run ID ...]

BASE and CAND are results directories, store files (records.jsonl, or bench.json of the
first format) or pytest-benchmark JSON files (--benchmark-json; with
--benchmark-save-data for the samples a verdict needs).

IMPL is a registered name (``attnsuite list``), ``all``, or ``FRAMEWORK:module:factory``
(the module is found from the current directory, as ``attnsuite check`` finds it); a name
that does not resolve is a usage error, before anything runs.
MODE is ``natural`` (each framework as its users run it: eager NumPy/PyTorch,
tf.function, jax.jit), ``all``, or any of eager / jit / xla.
Exit status: 0 success, 1 a significant regression (compare) or no point measured, 2 a
usage error or unreadable results.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from attnsuite import sanitize
from attnsuite.bench import compare as compare_mod
from attnsuite.bench import pytest_json, report, store
from attnsuite.bench.flops import PASSES
from attnsuite.bench.runner import Runner, expand_names, plan
from attnsuite.bench.sweeps import COMPILE_MODES, SWEEPS, Config, sweep
from attnsuite.impls.backends import DTYPES
from attnsuite.impls.errors import PluginError
from attnsuite.impls.registry import find_entry
from attnsuite.options import int_in
from attnsuite.processes import exit_status, interrupt_on_sigterm

console = Console(stderr=True)  # progress and messages
# Result tables go to stdout, wide enough not to wrap when it is not a terminal.
output = Console() if Console().is_terminal else Console(width=200)


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(f"{self.prog}: {message}")


def _bench_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="attnsuite bench", description="Time implementations over a sweep of shapes.",
                epilog="attnsuite bench compare BASE CAND [--threshold 0.1]: is CAND slower than BASE, "
                       "point by point, with a test of significance (attnsuite bench compare --help)")
    p.add_argument("impls", nargs="+", metavar="IMPL")
    p.add_argument("--sweep", choices=SWEEPS, default="quick")
    p.add_argument("--dtype", nargs="+", choices=DTYPES, help="override the sweep's dtypes")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--compile", nargs="+", default=["natural"], choices=["natural", "all", *COMPILE_MODES])
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="results directory (appended to)")
    p.add_argument("--machine", help="name of this machine in the results (default: host name)")
    p.add_argument("--threads", type=int_in(1), help="cap every framework's CPU threads (default: theirs)")
    return p


def _threshold(text: str) -> float:
    try:
        return compare_mod.check_threshold(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite fraction > 0 (0.1 = 10%), got {text!r}") from None


def _compare_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="attnsuite bench compare",
                description="Baseline against candidate, point by point, with a test of significance.")
    p.add_argument("base", metavar="BASE", help="results (directory or file), or with --interleaved an implementation")
    p.add_argument("cand", metavar="CAND")
    p.add_argument("--threshold", type=_threshold, default=0.1,
                   help="slowdown fraction that counts as a regression (default 0.1 = 10%%)")
    p.add_argument("--json", type=Path, help="also write every point's verdict to this JSON file")
    p.add_argument("--interleaved", action="store_true",
                   help="time the implementations BASE and CAND now, in alternation, in one process")
    p.add_argument("--sweep", choices=SWEEPS, default="quick", help="with --interleaved")
    p.add_argument("--dtype", nargs="+", choices=DTYPES, help="with --interleaved")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="with --interleaved")
    p.add_argument("--compile", nargs="+", default=["natural"], choices=["natural", "all", *COMPILE_MODES],
                   help="with --interleaved")
    p.add_argument("--threads", type=int, help="with --interleaved")
    p.add_argument("--rounds", type=int, default=10,
                   help="with --interleaved: the rounds (one timed block of each) before the first look at a "
                        "point; it goes on to 2, 4, 8, 16 times as many while its verdict is undecided (default 10)")
    p.add_argument("--max-time", type=float, default=None, metavar="SECONDS",
                   help="with --interleaved: the most seconds of timing one undecided point may take "
                        "(default 30)")
    p.add_argument("--machine", help="with --interleaved")
    p.add_argument("--out", type=Path, default=Path("out/bench-interleaved"),
                   help="with --interleaved: where its records go (appended to)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "compare":
            return _compare(_compare_parser().parse_args(argv[1:]))
        with interrupt_on_sigterm():   # SIGTERM, like Ctrl-C, ends the workers first
            return _bench(_bench_parser().parse_args(argv))
    except KeyboardInterrupt as exc:  # Ctrl-C, or a time limit's signal: the store keeps every point done
        console.print("attnsuite bench: interrupted; the points measured so far are in the results "
                      f"directory ({store.STORE_NAME}); `attnsuite report DIR` reports them", markup=False, soft_wrap=True)
        return exit_status(exc)
    except _UsageError as exc:
        console.print(str(exc), markup=False, soft_wrap=True)
        return 2


def _bench(args) -> int:
    for name in expand_names(args.impls):   # as `attnsuite check`: a misspelt name runs nothing
        try:
            find_entry(name)
        except PluginError as exc:
            raise _UsageError(f"attnsuite bench: {exc}") from exc
    try:
        configs, budget = sweep(args.sweep, args.device, args.dtype)
    except ValueError as exc:  # a GPU sweep asked of the CPU
        raise _UsageError(f"attnsuite bench: {exc}") from exc
    groups, unresolved = plan(args.impls, configs, args.compile)
    total = (sum(len(points) for _, points in groups) + len(unresolved) * len(configs)) * len(PASSES)
    names = ", ".join(expand_names(args.impls))
    console.print(f"[bold]attnsuite bench[/] {args.sweep} sweep on {args.device}: {names}")

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("starting", total=total)

        def on_event(event, payload):
            if event == "start":
                progress.update(task, description=f"{payload.impl} [{payload.compile}] {payload.config.label()}")
            else:
                progress.advance(task)
                if payload["status"] != "ok":
                    progress.console.print(f"  {payload['impl']} {payload['pass']}: {payload['status']}: "
                                           f"{sanitize.one_line(payload.get('reason') or '')}", markup=False, soft_wrap=True)

        records = Runner(args.out, budget, machine=args.machine, threads=args.threads,
                         progress=on_event).run(
            args.impls, configs, args.compile)
    report.write_report(store.load(args.out), args.out)
    _print_summary(records)
    console.print(f"results: {store.store_path(args.out)}; report: {args.out / 'bench.md'}")
    return 0 if any(r["status"] == "ok" for r in records) else 1


def _print_summary(records: list[dict]) -> None:
    table = Table(title="this run")
    for column in ("impl", "compile", "pass", "L", "median ms", "IQR %", "stable", "GFLOP/s", "status"):
        table.add_column(column)
    for r in records:
        ok = r["status"] == "ok"
        table.add_row(r["impl"], r["compile"], r["pass"], str(r["L_q"]),
                      f"{r['median_s'] * 1e3:.3g}" if ok else "",
                      f"{100 * r['iqr_s'] / r['median_s']:.0f}" if ok else "",
                      report.stable_text(r.get("stable")) if ok else "",
                      f"{r['flops_per_s'] / 1e9:.3g}" if ok else "", r["status"])
    output.print(table)


class _WarningsAsLines(warnings.catch_warnings):
    """Print the store's warnings (a torn line, with its file and line) one line each."""

    def __init__(self):
        super().__init__(record=True)

    def __enter__(self):
        self.caught = super().__enter__()
        warnings.simplefilter("always")
        return self.caught

    def __exit__(self, *exc):
        super().__exit__(*exc)
        for warning in self.caught:
            console.print(f"warning: {warning.message}", markup=False, soft_wrap=True)


def load_results(location) -> list[dict]:
    """A harness store or a pytest-benchmark file (or a directory holding one as bench.json)."""
    records = []
    for path in store.read_paths(location):
        if store.is_pytest_benchmark(path):
            records += pytest_json.load(path)
        else:
            with _WarningsAsLines():
                records += store.load(path)
    return records


def _compare(args) -> int:
    prog = "attnsuite bench compare"
    try:
        if args.interleaved:
            changes, title = _interleaved(args), f"{args.cand} vs {args.base}, interleaved"
        else:
            base, cand = load_results(args.base), load_results(args.cand)
            changes, title = compare_mod.compare_records(base, cand, args.threshold), f"{args.cand} vs {args.base}"
    except (FileNotFoundError, ValueError) as exc:  # StoreError is a ValueError
        console.print(f"{prog}: {exc}", markup=False, soft_wrap=True)
        return 2
    if not changes:
        console.print(f"{prog}: {args.base} and {args.cand} have no point in common "
                      f"(same machine, implementation, compile mode, pass and configuration)", markup=False, soft_wrap=True)
        return 2
    _print_changes(changes, f"{title} (threshold {args.threshold:.0%})", show_impl=not args.interleaved)
    counted = compare_mod.counts(changes)
    output.print(f"{len(changes)} points: " + ", ".join(f"{n} {v}" for v, n in counted.items()))
    if args.json:
        args.json.write_text(json.dumps([_change_json(c) for c in changes], indent=1, default=str))
    return 1 if counted["regressed"] else 0


def _interleaved(args) -> list:
    from attnsuite.bench import interleaved  # imports a framework: only when asked

    try:
        configs, budget = sweep(args.sweep, args.device, args.dtype)
    except ValueError as exc:
        raise _UsageError(f"attnsuite bench compare: {exc}") from exc
    if args.rounds < compare_mod.MIN_SAMPLES:
        raise _UsageError(f"attnsuite bench compare: --rounds: at least {compare_mod.MIN_SAMPLES}, got {args.rounds}")
    if args.max_time is not None and not (args.max_time > 0 and args.max_time < float("inf")):
        raise _UsageError(f"attnsuite bench compare: --max-time: a finite number of seconds > 0, got {args.max_time}")
    interleaved.resolve_pair(args.base, args.cand)  # a pair that cannot share a process: say so first
    console.print(f"[bold]attnsuite bench compare --interleaved[/] {args.base} (baseline) and {args.cand}: "
                  f"{args.sweep} sweep on {args.device}")
    with console.status("starting") as status:
        records = interleaved.run(args.base, args.cand, configs, budget, args.compile, args.out,
                                  threads=args.threads, machine=args.machine, min_rounds=args.rounds,
                                  threshold=args.threshold, max_time=args.max_time or interleaved.POINT_TIME,
                                  progress=lambda text: status.update(text))
    console.print(f"records: {store.store_path(args.out)}", markup=False, soft_wrap=True)
    return compare_mod.pair_up(records, args.threshold)


def _print_changes(changes, title: str, show_impl: bool = True) -> None:
    table = Table(title=title)
    columns = (["impl"] if show_impl else []) + ["compile", "pass", "config", "base ms", "cand ms", "ratio",
                                                 "95% CI", "p", "stable", "verdict", "why"]
    for column in columns:
        table.add_column(column)
    for change in changes:
        k, v = change.key, change.verdict
        stable = "/".join(report.stable_text(r.get("stable")) or "?" for r in (change.base, change.cand))
        row = [k["impl"]] if show_impl else []
        row += [str(k["compile"]), str(k["pass"]), _config_label(k), _ms(change.base), _ms(change.cand),
                f"{v.ratio:.3f}" if v.ratio else "", f"{v.ci[0]:.3f}-{v.ci[1]:.3f}" if v.ci else "",
                f"{v.p:.2g}" if v.p is not None else "", stable,
                v.verdict.upper() if v.verdict == "regressed" else v.verdict, v.reason]
        table.add_row(*row)
    output.print(table)


def _config_label(key: dict) -> str:
    try:
        return f"{Config.from_dict(key).label()} @{key['machine']}"
    except (KeyError, TypeError):  # a pytest-benchmark test without the configuration in extra_info
        return f"@{key.get('machine')}"


def _change_json(change) -> dict:
    v = change.verdict
    return {**change.key, "verdict": v.verdict, "reason": v.reason, "ratio": v.ratio,
            "ci": list(v.ci) if v.ci else None, "p": v.p,
            "stable": [change.base.get("stable"), change.cand.get("stable")],
            "samples": [len(change.base.get("samples_s") or []), len(change.cand.get("samples_s") or [])]}


def _ms(record: dict) -> str:
    if record.get("status") != "ok":
        return record.get("status", "")
    iqr = 100 * (record["q3_s"] - record["q1_s"]) / record["median_s"]
    return f"{record['median_s'] * 1e3:.3g} ±{iqr:.0f}%"


def report_main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = _Parser(prog="attnsuite report", description="Merge benchmark results of several machines into one report.")
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
    p.add_argument("--out", type=Path, default=Path("out/report"))
    p.add_argument("--run", nargs="+", metavar="ID", help="report only these runs (ids or id prefixes)")
    p.add_argument("--drop-run", nargs="+", metavar="ID", help="leave these runs out")
    try:
        args = p.parse_args(argv)
        with _WarningsAsLines():
            files = report.merge(args.dirs, args.out, keep=args.run, drop=args.drop_run)
    except _UsageError as exc:
        console.print(str(exc), markup=False, soft_wrap=True)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"attnsuite report: {exc}", markup=False, soft_wrap=True)
        return 2
    console.print(f"report: {', '.join(str(f) for f in files)}", markup=False, soft_wrap=True)
    return 0
