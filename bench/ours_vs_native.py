"""Our fused layers against the native path each wraps, side by side in one session:

    python -m attnsuite.bench.ours_vs_native                      # -> reports/bench/ours_vs_native.md
    python -m attnsuite.bench.ours_vs_native --sweep quick --out DIR

Each pair (native, ours) is timed with ``attnsuite bench compare --interleaved NATIVE OURS``
in a process of its own (a framework per process): at every point of the sweep the two
take turns block by block, so a load that drifts touches both alike. The table gives our
throughput relative to the native path (the inverse of the Hodges–Lehmann ratio of the
rounds' times, ours / native), its interval (99%: the run looks at each point up to five
times) and the Wilcoxon signed-rank p of the paired difference, and the target: at least
0.95 (``TARGET``) of native throughput. A point meets it when the whole interval lies above the
target, misses it when the whole interval lies below, and is undecided otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from attnsuite.bench.environment import REPO_ROOT
from attnsuite.bench.sweeps import SWEEPS
from attnsuite.environment import git_commit
from attnsuite.files import atomic_write_text

PAIRS = (("torch.sdpa", "torch.fused"),
         ("jax.nn.dot_product_attention", "jax.fused"),
         ("keras.tensorflow.MultiHeadAttention", "tensorflow.fused"))
TARGET = 0.95
FILE_NAME = "ours_vs_native.md"


def time_pair(native: str, ours: str, sweep: str, threads: int | None, out: Path) -> list[dict]:
    """Every point's comparison (``bench compare --json``), ours as the candidate."""
    json_path = out / f"{ours}.json"
    command = [sys.executable, "-m", "attnsuite", "bench", "compare", "--interleaved", native, ours,
               "--sweep", sweep, "--out", str(out / ours), "--json", str(json_path)]
    command += ["--threads", str(threads)] if threads else []
    status = subprocess.run(command).returncode
    if status not in (0, 1):   # 1: some point slower beyond the threshold, still a result
        raise RuntimeError(f"{' '.join(command)} exited {status}")
    return json.loads(json_path.read_text())


def relative_throughput(point: dict) -> tuple[float, tuple[float, float]] | None:
    """Ours / native throughput and its interval, from the time ratio ours / native."""
    if point.get("ratio") is None or not point.get("ci"):
        return None
    low, high = point["ci"]
    return 1 / point["ratio"], (1 / high, 1 / low)


def unmeasured(point: dict) -> str:
    """Why a point has no ratio: the side (or sides) without samples."""
    base, cand = point.get("samples") or (0, 0)
    missing = [side for side, n in (("native", base), ("ours", cand)) if not n]
    return f"{' and '.join(missing)} not measured" if missing else f"no ratio: {point.get('reason')}"


def against_target(interval: tuple[float, float]) -> str:
    low, high = interval
    if low >= TARGET:
        return "meets"
    if high < TARGET:
        return "MISSES"
    return "undecided"


def table(results: dict[tuple[str, str], list[dict]], sweep: str, threads: int | None,
          made_from: str = "") -> str:
    lines = [f"# Our fused layers against the native path ({sweep} sweep, "
             f"{threads or 'all'} thread{'s' if threads != 1 else ''})", "",
             __doc__.split("\n\n", 2)[2].strip() + made_from, "",
             "| ours | native | compile | pass | config | ours / native throughput | interval | p | "
             f">= {TARGET} |", "|---|---|---|---|---|---|---|---|---|"]
    tally = {"meets": 0, "undecided": 0, "MISSES": 0}
    for (native, ours), points in results.items():
        for point in points:
            found = relative_throughput(point)
            config = (f"L={point['L_q']} E={point['d_model']} H={point['heads']}/{point['kv_heads']}kv "
                      f"{point['dtype']}{' causal' if point['causal'] else ''}")
            if found is None:
                lines.append(f"| {ours} | {native} | {point['compile']} | {point['pass']} | {config} | "
                             f"{unmeasured(point)} | | | |")
                continue
            throughput, interval = found
            verdict = against_target(interval)
            tally[verdict] += 1
            p = "" if point.get("p") is None else f"{point['p']:.2g}"
            lines.append(f"| {ours} | {native} | {point['compile']} | {point['pass']} | {config} | "
                         f"{throughput:.3f} | [{interval[0]:.3f}, {interval[1]:.3f}] | {p} | {verdict} |")
    summary = ", ".join(f"{n} {v.lower()}" for v, n in tally.items())
    return "\n".join(lines[:4] + [f"Points: {summary}.", ""] + lines[4:]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnsuite.bench.ours_vs_native",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", choices=SWEEPS, default="default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "bench")
    parser.add_argument("--pair", nargs=2, action="append", metavar=("NATIVE", "OURS"),
                        help="time this pair only (repeatable; default: ours.fused against each native path)")
    args = parser.parse_args(argv)
    pairs = [tuple(p) for p in args.pair] if args.pair else PAIRS
    args.out.mkdir(parents=True, exist_ok=True)
    source = git_commit()     # the code timed: read before, not after a run of many minutes
    with tempfile.TemporaryDirectory(prefix="ours-vs-native-") as scratch:
        results = {(native, ours): time_pair(native, ours, args.sweep, args.threads, Path(scratch))
                   for native, ours in pairs}
    made_from = (f"\n\nMade from commit {source['commit']}{' with uncommitted changes' if source['dirty'] else ''}."
                 if source["commit"] else "")
    atomic_write_text(args.out / FILE_NAME, table(results, args.sweep, args.threads, made_from))
    print(f"written: {os.path.relpath(args.out / FILE_NAME)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
