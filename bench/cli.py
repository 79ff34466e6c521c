"""``attnsuite bench`` and ``attnsuite report``.

    attnsuite bench IMPL [IMPL ...] [--sweep quick|default|long] [--dtype D ...]
                    [--device cpu|gpu] [--compile MODE ...] [--out DIR] [--machine NAME]
                    [--threads N]
    attnsuite bench compare OLD NEW [--threshold 0.1]
    attnsuite report DIR [DIR ...] [--out DIR]

IMPL is a registered name (``attnsuite list``), ``all``, or ``FRAMEWORK:module:factory``.
MODE is ``natural`` (each framework as its users run it: eager NumPy/PyTorch,
tf.function, jax.jit), ``all``, or any of eager / jit / xla.
Exit status: 0 success, 1 a regression (compare) or no point measured, 2 a usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from attnsuite.bench import compare as compare_mod
from attnsuite.bench import report, store
from attnsuite.bench.flops import PASSES
from attnsuite.bench.runner import Runner, expand_names, plan
from attnsuite.bench.sweeps import COMPILE_MODES, SWEEPS, Config, sweep
from attnsuite.impls.backends import DTYPES
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
    p = _Parser(prog="attnsuite bench", description="Time implementations over a sweep of shapes.")
    p.add_argument("impls", nargs="+", metavar="IMPL")
    p.add_argument("--sweep", choices=SWEEPS, default="quick")
    p.add_argument("--dtype", nargs="+", choices=DTYPES, help="override the sweep's dtypes")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--compile", nargs="+", default=["natural"], choices=["natural", "all", *COMPILE_MODES])
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="results directory (appended to)")
    p.add_argument("--machine", help="name of this machine in the results (default: host name)")
    p.add_argument("--threads", type=int, help="cap every framework's CPU threads (default: theirs)")
    return p


def _compare_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="attnsuite bench compare", description="Flag regressions between two result sets.")
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--threshold", type=float, default=0.1,
                   help="slowdown fraction that counts as a regression (default 0.1 = 10%%)")
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
                      "directory (bench.json); `attnsuite report DIR` reports them", markup=False)
        return exit_status(exc)
    except _UsageError as exc:
        console.print(str(exc), markup=False)
        return 2


def _bench(args) -> int:
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
                                           f"{(payload.get('reason') or '')[:160]}", markup=False)

        records = Runner(args.out, budget, machine=args.machine, threads=args.threads,
                         progress=on_event).run(
            args.impls, configs, args.compile)
    report.write_report(store.load(args.out), args.out)
    _print_summary(records)
    console.print(f"results: {store.store_path(args.out)}; report: {args.out / 'bench.md'}")
    return 0 if any(r["status"] == "ok" for r in records) else 1


def _print_summary(records: list[dict]) -> None:
    table = Table(title="this run")
    for column in ("impl", "compile", "pass", "L", "median ms", "IQR %", "GFLOP/s", "status"):
        table.add_column(column)
    for r in records:
        ok = r["status"] == "ok"
        table.add_row(r["impl"], r["compile"], r["pass"], str(r["L_q"]),
                      f"{r['median_s'] * 1e3:.3g}" if ok else "",
                      f"{100 * r['iqr_s'] / r['median_s']:.0f}" if ok else "",
                      f"{r['flops_per_s'] / 1e9:.3g}" if ok else "", r["status"])
    output.print(table)


def _compare(args) -> int:
    try:
        changes = compare_mod.compare(args.old, args.new, args.threshold)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"attnsuite bench compare: {exc}", markup=False)
        return 2
    if not changes:
        console.print(f"attnsuite bench compare: {args.old} and {args.new} have no point in common "
                      f"(same machine, implementation, compile mode, pass and configuration)", markup=False)
        return 2
    table = Table(title=f"{args.new} vs {args.old} (threshold {args.threshold:.0%})")
    for column in ("impl", "compile", "pass", "config", "old ms", "new ms", "ratio", "verdict"):
        table.add_column(column)
    regressions = 0
    for change in changes:
        k, ratio = change.key, change.ratio
        verdict = "REGRESSION" if change.regressed else "improved" if change.improved else "same"
        regressions += change.regressed
        table.add_row(k["impl"], k["compile"], k["pass"],
                      f"{Config.from_dict(k).label()} @{k['machine']}",
                      _ms(change.old), _ms(change.new), f"{ratio:.2f}" if ratio else "", verdict)
    output.print(table)
    output.print(f"{regressions} regression(s) among {len(changes)} points")
    return 1 if regressions else 0


def _ms(record: dict) -> str:
    return f"{record['median_s'] * 1e3:.3g}" if record.get("status") == "ok" else record.get("status", "")


def report_main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = _Parser(prog="attnsuite report", description="Merge benchmark results of several machines into one report.")
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
    p.add_argument("--out", type=Path, default=Path("out/report"))
    try:
        args = p.parse_args(argv)
        files = report.merge(args.dirs, args.out)
    except _UsageError as exc:
        console.print(str(exc), markup=False)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"attnsuite report: {exc}", markup=False)
        return 2
    console.print(f"report: {', '.join(str(f) for f in files)}", markup=False)
    return 0
