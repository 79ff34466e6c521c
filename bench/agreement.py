"""Do the report's figures agree with an independent timing of the same call?

    python -m attnsuite.bench.agreement reports/bench                 # every implementation in it
    python -m attnsuite.bench.agreement reports/bench torch.fused     # some of them

For each ``ok`` record of this machine in the results directory, the same call is
rebuilt (``attnsuite.bench.case``, same configuration, compile mode, pass and thread cap) and timed
again, independently of ``attnsuite.bench.timing``: with ``torch.utils.benchmark.Timer.
blocked_autorange`` for PyTorch and with ``timeit`` (``autorange`` for the number of
calls, 7 repeats) for the other frameworks. Two timings agree when their interquartile
ranges overlap: neither median can be told apart from the other within the spreads
measured. The independent timing is compared with the report's figure, and with the
harness's own timer run again in the same process just before it ("harness now"): on
a shared machine whose load moves, the second comparison separates a difference of
method from a drift of the machine since the report. Each implementation is re-timed
in its own process (as the harness does); the table is printed and written to
``DIR/agreement.md``.

This is a documented check, not a unit test: timings on a shared machine move between
runs, and a unit test built on them would flake.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import timeit
from pathlib import Path

from attnsuite.files import atomic_write_text
from attnsuite.bench import store
from attnsuite.bench.environment import REPO_ROOT, collect
from attnsuite.bench.runner import FRAMEWORK_ENV, thread_env
from attnsuite.bench.sweeps import Config
from attnsuite.bench.timing import quantile
from attnsuite.impls.registry import find_entry


def agree(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Do the intervals (q1, q3) ``a`` and ``b`` overlap?"""
    return a[0] <= b[1] and b[0] <= a[1]


def _independent(call, block, framework: str) -> dict:
    """Median and quartiles per call, measured without ``attnsuite.bench.timing``."""
    if framework == "torch":
        from torch.utils import benchmark as torch_benchmark
        import torch
        timer = torch_benchmark.Timer(stmt="block(call())", globals={"call": call, "block": block},
                                      num_threads=torch.get_num_threads())
        m = timer.blocked_autorange(min_run_time=1.0)
        return {"method": "torch.utils.benchmark blocked_autorange", "median_s": m.median,
                "q1_s": quantile(m.times, 0.25), "q3_s": quantile(m.times, 0.75), "runs": len(m.times)}
    timer = timeit.Timer(lambda: block(call()))
    number, _ = timer.autorange()
    times = [t / number for t in timer.repeat(repeat=7, number=number)]
    return {"method": f"timeit autorange ({number} calls) x 7", "median_s": statistics.median(times),
            "q1_s": quantile(times, 0.25), "q3_s": quantile(times, 0.75), "runs": len(times)}


def retime(records: list[dict]) -> list[dict]:
    """Re-time each record's call in this process (one implementation's records)."""
    from attnsuite.bench import frameworks, timing
    from attnsuite.bench.case import build

    rows = []
    for r in records:
        frameworks.load(r["framework"]).configure(r["env"].get("threads"))  # as the worker did
        case = build(r["impl"], Config.from_dict(r))
        call, block = case.prepare(r["pass"], r["compile"])
        timing.first_call(call, block)
        # The harness's own timer again, right before the independent one: tells drift of
        # the machine since the report (report vs now) from a difference of method.
        now = timing.measure(call, block, max_time=1.0)
        other = _independent(call, block, case.entry.framework)
        rows.append({"impl": r["impl"], "compile": r["compile"], "pass": r["pass"], "L": r["L_q"],
                     "report": (r["median_s"], r["q1_s"], r["q3_s"]),
                     "harness_now": (now.median, now.q1, now.q3),
                     "independent": (other["median_s"], other["q1_s"], other["q3_s"]),
                     "method": other["method"]})
    return rows


def _ms(stats: tuple[float, float, float]) -> str:
    median, q1, q3 = (1e3 * v for v in stats)
    return f"{median:.3g} [{q1:.3g}, {q3:.3g}]"


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def _child(directory: Path, impl: str) -> int:
    records = [r for r in store.load(directory) if r["impl"] == impl and r["status"] == "ok"
               and r["machine"] == collect()["machine"]]
    print(json.dumps(retime(records)))
    return 0


def _child_env(records: list[dict]) -> dict:
    entry = find_entry(records[0]["impl"])
    threads = records[0]["env"].get("threads")
    env = dict(os.environ, **FRAMEWORK_ENV.get(entry.framework, {}),
               **thread_env(entry.framework, threads), **dict(entry.env))
    if records[0]["device"] == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnsuite.bench.agreement", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("impls", nargs="*", help="default: every implementation measured there")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.directory, args.child)

    machine = collect()["machine"]
    ok = [r for r in store.load(args.directory) if r["status"] == "ok" and r["machine"] == machine]
    impls = args.impls or list(dict.fromkeys(r["impl"] for r in ok))
    rows = []
    for impl in impls:
        mine = [r for r in ok if r["impl"] == impl]
        if not mine:
            print(f"{impl}: no ok record of machine {machine!r} in {args.directory}", file=sys.stderr)
            continue
        done = subprocess.run([sys.executable, "-m", "attnsuite.bench.agreement", str(args.directory), "--child", impl],
                              capture_output=True, text=True, env=_child_env(mine), cwd=REPO_ROOT)
        if done.returncode != 0:
            print(f"{impl}: re-timing failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        rows += json.loads(done.stdout.strip().splitlines()[-1])

    table = []
    for row in rows:
        report_, now, independent = row["report"], row["harness_now"], row["independent"]
        table.append({"impl": row["impl"], "compile": row["compile"], "pass": row["pass"], "L": row["L"],
                      "report ms [IQR]": _ms(report_), "harness now ms [IQR]": _ms(now),
                      "independent ms [IQR]": _ms(independent),
                      "independent / report": f"{independent[0] / report_[0]:.2f}",
                      "agree with report": _yes(agree(report_[1:], independent[1:])),
                      "agree with harness now": _yes(agree(now[1:], independent[1:])),
                      "independent method": row["method"]})
    import pandas as pd

    from attnsuite.bench.report import markdown
    frame = pd.DataFrame(table)
    summary = "no points re-timed"
    if rows:
        lines = []
        for name, column in (("report", "agree with report"), ("harness_now", "agree with harness now")):
            ratios = [row["independent"][0] / row[name][0] for row in rows]
            agreed = sum(t[column] == "yes" for t in table)
            lines.append(f"- independent vs {name.replace('_', ' ')}: {agreed} of {len(table)} points agree "
                         f"(IQRs overlap); median ratio {statistics.median(ratios):.2f}, "
                         f"range {min(ratios):.2f}-{max(ratios):.2f}")
        summary = "\n".join(lines)
    text = "\n".join(["# Agreement with an independent timing", "", __doc__.split("\n\n")[2].strip(), "",
                      summary, "", markdown(frame) if len(frame) else ""])
    atomic_write_text(args.directory / "agreement.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
