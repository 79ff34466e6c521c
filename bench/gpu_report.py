"""The GPU study's report (``reports/gpu/``): the three questions of the ``gpu-*`` sweeps.

    python -m attnsuite.bench.gpu_report DIR [DIR ...] [--out reports/gpu]

- kernels: at each shape, our fused core's throughput against the fastest other kernel
  of the same framework (each SDPA backend and each ``jax.nn.dot_product_attention``
  implementation timed apart); the target is a ratio of at least ``TARGET_RATIO``;
- layers: whole layers, projections included, in TFLOP/s and % of the matmul peak
  measured in the same process;
- memory: how memory grows from one length to the next, as the exponent ``p`` of
  ``memory ∝ L**p`` between successive lengths (1: linear, 2: an L×L matrix is held).

DIR are benchmark stores (``attnsuite bench --out DIR``). Everything is written
atomically; an empty selection writes "(none)" rather than failing, since a GPU run may
have measured only some of the three.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from attnsuite.files import atomic_write_bytes, atomic_write_text  # noqa: E402
from attnsuite.bench import compare, report, significance, store  # noqa: E402
from attnsuite.bench.flops import FORMULA_VERSION  # noqa: E402

TARGET_RATIO = 0.95
LINEAR_EXPONENT = 1.25      # at most this: linear; from QUADRATIC_EXPONENT on: quadratic
QUADRATIC_EXPONENT = 1.75
SHAPE = ["machine", "device", "dtype", "batch", "d_model", "heads", "kv_heads", "causal", "L_q", "L_k", "pass"]
FILES = ("gpu.md", "kernels.csv", "layers.csv", "memory.csv", "kernels.png", "memory.png")


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"].assign(head_size=lambda d: d["d_model"] // d["heads"])


def _is_ours(impl: pd.Series) -> pd.Series:
    return impl.str.fullmatch(r"core\.\w+\.fused")


def kernel_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """One row per shape and framework: our core, the fastest other kernel, their ratio."""
    cores = _ok(df)
    cores = cores[cores["kind"] == "kernel"]
    rows = []
    for key, shape in cores.groupby(SHAPE + ["framework"], dropna=False):
        ours = shape[_is_ours(shape["impl"])]
        others = shape[~_is_ours(shape["impl"])]
        if ours.empty or others.empty:
            continue
        mine, best = ours.iloc[0], others.loc[others["flops_per_s"].idxmax()]
        ratio = mine["flops_per_s"] / best["flops_per_s"]
        low, high, p = throughput_ratio_ci(best, mine)
        rows.append({
            "framework": mine["framework"], "pass": mine["pass"], "dtype": mine["dtype"],
            "B": mine["batch"], "H": mine["heads"], "d": mine["head_size"], "causal": bool(mine["causal"]),
            "L": mine["L_q"], "ours TFLOP/s": mine["flops_per_s"] / 1e12,
            "ours % peak": mine["pct_peak"], "fastest other": best["impl"],
            "its TFLOP/s": best["flops_per_s"] / 1e12, "ratio": ratio,
            "meets": bool(ratio >= TARGET_RATIO),
            "95% CI": f"{low:.3f}-{high:.3f}" if p is not None else "", "p": p,
            "significance": ("meets" if low >= TARGET_RATIO else "misses" if high < TARGET_RATIO
                             else "uncertain") if p is not None else "no samples",
            "all kernels TFLOP/s": ", ".join(f"{r.impl} {r.flops_per_s / 1e12:.0f}"
                                             for r in shape.sort_values("flops_per_s", ascending=False).itertuples()),
        })
    columns = ["framework", "pass", "dtype", "B", "H", "d", "causal", "L", "ours TFLOP/s", "ours % peak",
               "fastest other", "its TFLOP/s", "ratio", "meets", "95% CI", "p", "significance",
               "all kernels TFLOP/s"]
    return pd.DataFrame(rows, columns=columns)


def throughput_ratio_ci(best, mine) -> tuple[float, float, float | None]:
    """The bench compare machinery on one pair: the interval of our throughput over the
    other kernel's (the inverse of the time ratio's), and the Mann-Whitney p of the times."""
    a, b = best.get("samples_s"), mine.get("samples_s")
    if not isinstance(a, list) or not isinstance(b, list) or min(len(a), len(b)) < compare.MIN_SAMPLES:
        return math.nan, math.nan, None
    time_low, time_high = significance.ratio_ci(a, b)
    return 1 / time_high, 1 / time_low, significance.mann_whitney(a, b)[1]


def layer_table(df: pd.DataFrame) -> pd.DataFrame:
    """Whole layers: TFLOP/s and % of peak per implementation, shape and pass."""
    layers = _ok(df)
    layers = layers[layers["kind"] != "kernel"].sort_values(["framework", "pass", "L_q", "flops_per_s"],
                                                           ascending=[True, True, True, False])
    return pd.DataFrame({
        "framework": layers["framework"], "pass": layers["pass"], "impl": layers["impl"],
        "B": layers["batch"], "E": layers["d_model"], "H": layers["heads"], "L": layers["L_q"],
        "dtype": layers["dtype"], "causal": layers["causal"],
        "median ms": layers["median_s"] * 1e3, "TFLOP/s": layers["flops_per_s"] / 1e12,
        "% peak": layers["pct_peak"],
    })


def memory_bytes(df: pd.DataFrame) -> pd.Series:
    """The memory a point adds: the compiled program's temporary buffers where the
    framework reports them (exact), else the device allocator's rise during one call."""
    compiled = df["compiled_temp_bytes"] if "compiled_temp_bytes" in df else pd.Series(np.nan, index=df.index)
    return compiled.where(compiled.notna(), df["peak_memory_delta_bytes"])


def growth_exponent(lengths, memory) -> float:
    """p in memory ∝ L**p between the two largest lengths (NaN with fewer than two)."""
    pairs = sorted((L, m) for L, m in zip(lengths, memory) if m and m > 0 and not math.isnan(m))
    if len(pairs) < 2:
        return math.nan
    (L1, m1), (L2, m2) = pairs[-2], pairs[-1]
    return math.log(m2 / m1) / math.log(L2 / L1)


def verdict(exponent: float) -> str:
    if math.isnan(exponent):
        return "too few sizes"
    if exponent <= LINEAR_EXPONENT:
        return "linear"
    return "quadratic" if exponent >= QUADRATIC_EXPONENT else "between"


def memory_growth(df: pd.DataFrame) -> pd.DataFrame:
    """One row per series (everything but the length): memory per length, and its growth."""
    series_keys = ["machine", "impl", "framework", "pass", "dtype", "batch", "d_model", "heads", "causal"]
    measured = df.assign(memory=memory_bytes(df))
    rows = []
    for key, series in measured.groupby(series_keys, dropna=False):
        ok = series[(series["status"] == "ok") & series["memory"].notna()].sort_values("L_q")
        if ok.empty:
            continue
        failed = series[series["status"] != "ok"]
        exponent = growth_exponent(ok["L_q"], ok["memory"])
        rows.append({**dict(zip(series_keys, key)),
                     "MiB by length": ", ".join(f"{L}: {m / 2**20:.0f}" for L, m in zip(ok["L_q"], ok["memory"])),
                     "largest L": int(ok["L_q"].max()), "exponent": exponent, "growth": verdict(exponent),
                     "failed at": ", ".join(f"{L} ({s})" for L, s in zip(failed["L_q"], failed["status"])),
                     "measured as": ok["compiled_memory_method"].dropna().iloc[0]
                     if "compiled_memory_method" in ok and ok["compiled_memory_method"].notna().any()
                     else ok["memory_method"].iloc[0]})
    return pd.DataFrame(rows)


# --- figures -------------------------------------------------------------------------------

def _plot_kernels(df: pd.DataFrame) -> bytes | None:
    cores = _ok(df)
    cores = cores[cores["kind"] == "kernel"]
    if cores.empty:
        return None
    panels = sorted(cores.groupby(["framework", "pass", "head_size", "causal"]).groups)
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.2 * len(panels)), squeeze=False)
    for ax, (framework, pass_, head_size, causal) in zip(axes[:, 0], panels):
        part = cores[(cores["framework"] == framework) & (cores["pass"] == pass_)
                     & (cores["head_size"] == head_size) & (cores["causal"] == causal)]
        for impl, series in part.groupby("impl"):
            series = series.sort_values("L_q")
            ax.plot(series["L_q"], series["flops_per_s"] / 1e12, marker="o", label=impl,
                    linewidth=2.5 if _is_ours(pd.Series([impl])).iloc[0] else 1)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{framework} {pass_.replace('_', ' + ')}, d={head_size}{', causal' if causal else ''}")
        ax.set_ylabel("TFLOP/s")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("sequence length")
    return report._png(fig)


def _plot_memory(df: pd.DataFrame) -> bytes | None:
    measured = df[df["status"] == "ok"].assign(memory=memory_bytes(df))
    measured = measured[measured["memory"].notna() & (measured["memory"] > 0)]
    if measured.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, (pass_, part) in zip(axes, measured.groupby("pass")):
        for key, series in part.groupby(["impl", "causal"]):
            series = series.sort_values("L_q")
            ax.plot(series["L_q"], series["memory"] / 2**20, marker="o",
                    label=f"{key[0]}{' causal' if key[1] else ''}")
        L = np.array(sorted(part["L_q"].unique()), dtype=float)
        ref = part["memory"].min() / 2**20
        ax.plot(L, ref * L / L[0], "k--", linewidth=0.8, label="∝ L")
        ax.plot(L, ref * (L / L[0]) ** 2, "k:", linewidth=0.8, label="∝ L²")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"memory added, {pass_.replace('_', ' + ')}")
        ax.set_xlabel("sequence length")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("MiB")
    return report._png(fig)


# --- the report ------------------------------------------------------------------------------

def _environment(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (machine, framework), part in df.groupby(["machine", "framework"]):
        env = part["env"].iloc[0] or {}
        info = env.get("framework") or {}
        peaks = part.dropna(subset=["peak_flops_per_s"]).drop_duplicates("dtype") if "peak_flops_per_s" in part else part.iloc[:0]
        rows.append({"machine": machine, "framework": framework, "version": info.get("version"),
                     "gpu": info.get("gpu"), "cuda/cudnn": " / ".join(str(info[k]) for k in ("cuda", "cudnn") if info.get(k)),
                     "matmul peak TFLOP/s": ", ".join(f"{r.dtype} {r.peak_flops_per_s / 1e12:.0f}"
                                                      for r in peaks.itertuples()),
                     "commit": ((env.get("git") or {}).get("commit") or "")[:10], "run": part["run_id"].iloc[0]})
    return pd.DataFrame(rows)


def _fmt_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "(none)"
    shown = table.copy()
    for column in shown.columns:
        if shown[column].dtype.kind == "f":
            shown[column] = shown[column].map(lambda v: "" if math.isnan(v) else f"{v:.3g}")
    return report.markdown(shown)


def write(records: list[dict], out_dir) -> list[Path]:
    if not records:
        raise ValueError("no records to report")
    out = Path(out_dir)
    df = report.frame(records).assign(env=[r.get("env") for r in records])
    kernels, layers, memory = kernel_ratios(df), layer_table(df), memory_growth(df)
    met = int(kernels["meets"].sum()) if len(kernels) else 0
    generated = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    md = ["# attnsuite on a GPU", "",
          f"Generated {generated} from {len(df)} records ({FORMULA_VERSION}; a core is credited with "
          f"QK^T and PV only). TFLOP/s and % of a matmul peak measured in the same process, "
          f"framework and dtype.", "",
          "## Environment", "", _fmt_table(_environment(df)), "",
          "## Our fused cores against the fastest kernel of their framework", "",
          f"Target: ratio ≥ {TARGET_RATIO}. Met at {met} of {len(kernels)} shapes.", "",
          _fmt_table(kernels.drop(columns=["all kernels TFLOP/s"])), "",
          "Every kernel at every shape is in `kernels.csv`.", "",
          "## Layers, projections included", "", _fmt_table(layers), "",
          "## Memory growth with length", "",
          f"`exponent` is p in memory ∝ L^p between the two largest lengths measured; "
          f"linear ≤ {LINEAR_EXPONENT}, quadratic ≥ {QUADRATIC_EXPONENT}.", "",
          _fmt_table(memory), "",
          "## Not measured", "", _fmt_table(report.problems_table(df)), "",
          "![kernels](kernels.png)", "", "![memory](memory.png)", ""]
    atomic_write_text(out / "kernels.csv", kernels.to_csv(index=False))
    atomic_write_text(out / "layers.csv", layers.to_csv(index=False))
    atomic_write_text(out / "memory.csv", memory.to_csv(index=False))
    written = [out / name for name in ("kernels.csv", "layers.csv", "memory.csv")]
    for name, png in (("kernels.png", _plot_kernels(df)), ("memory.png", _plot_memory(df))):
        if png is not None:
            atomic_write_bytes(out / name, png)
            written.append(out / name)
    atomic_write_text(out / "gpu.md", "\n".join(md))
    return [out / "gpu.md"] + written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnsuite.bench.gpu_report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
    parser.add_argument("--out", type=Path, default=Path("reports/gpu"))
    args = parser.parse_args(argv)
    try:
        files = write(store.load_many(args.dirs), args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"attnsuite.bench.gpu_report: {exc}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
