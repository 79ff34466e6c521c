"""Reports from one or more stores: bench.csv, bench.md, bench.html and PNG plots.

Every row keeps the machine and the run it was measured in, so the stores of several
machines merge into one report (``attnsuite report DIR DIR ... --out DIR``), and two runs
into one directory stay two runs (a line each in the plots, a run column in the tables);
``select_runs`` keeps or drops runs by id. Every file is written atomically: a reader
never sees half a report.
"""

from __future__ import annotations

import datetime
import html
import io
import math
from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import matplotlib.ticker  # noqa: E402
import pandas as pd  # noqa: E402

from attnsuite.files import atomic_write_bytes, atomic_write_text  # noqa: E402
from attnsuite.bench import store  # noqa: E402
from attnsuite.bench.flops import FORMULA_VERSION, PASSES  # noqa: E402

REPORT_FILES = (store.STORE_NAME, "bench.csv", "bench.md", "bench.html",
                "latency.png", "throughput.png", "params.png")
# Everything but the lengths: one plotted line per series.
FRAMEWORK_PACKAGES = ("numpy", "torch", "tensorflow", "tensorflow-cpu", "keras", "jax", "jaxlib", "flax")
SERIES_COLUMNS = ["machine", "run_id", "impl", "compile", "batch", "d_model", "heads", "kv_heads", "dtype",
                  "causal", "device"]
# Shown in a plot's title when one value holds for every line, else in each line's label.
FIXED_COLUMNS = {"batch": "B={}", "d_model": "E={}", "heads": "H={}", "kv_heads": "kv heads={}",
                 "dtype": "{}", "causal": "causal={}", "device": "{}", "compile": "compile={}",
                 "machine": "on {}"}
RUN_ID_SHOWN = 8  # characters of a run id in tables and legends
FRAMEWORK_ORDER = ("numpy", "torch", "tensorflow", "jax")
KIND_STYLE = {"ours": dict(linestyle="-", linewidth=2.4), "builtin": dict(linestyle="--", linewidth=1.2),
              "kernel": dict(linestyle="--", linewidth=1.2), "oracle": dict(linestyle=":", linewidth=1.2),
              "plugin": dict(linestyle="-.", linewidth=1.2)}


def run_ids(records: list[dict]) -> list[str]:
    """The runs of ``records``, in the order their first record appears."""
    return list(dict.fromkeys(r.get("run_id") or "?" for r in records))


def select_runs(records: list[dict], keep: list[str] | None = None, drop: list[str] | None = None) -> list[dict]:
    """The records of the runs ``keep`` names (all when None), less those ``drop`` names.
    A run is named by its id or an unambiguous prefix of it."""
    known = run_ids(records)

    def resolve(prefix: str) -> str:
        found = [r for r in known if r.startswith(prefix)]
        if len(found) != 1:
            why = "no run" if not found else f"{len(found)} runs"
            raise ValueError(f"run {prefix!r}: {why} with that id; runs here: {', '.join(known)}")
        return found[0]

    kept = set(map(resolve, keep)) if keep else set(known)
    kept -= set(map(resolve, drop or []))
    selected = [r for r in records if (r.get("run_id") or "?") in kept]
    if not selected:
        raise ValueError("no run left to report")
    return selected


def frame(records: list[dict]) -> pd.DataFrame:
    """One row per record; the environment flattened into a few columns."""
    rows = []
    for record in records:
        env = record.get("env") or {}
        framework = env.get("framework") or {}
        row = {k: v for k, v in record.items() if k != "env"}
        versions = env.get("versions") or {}
        row.update(cpu=env.get("cpu"), cpus=env.get("cpus_usable"), threads_cap=env.get("threads"),
                   load_avg=env.get("load_avg_1min"),
                   gpu=", ".join(g.get("name", "?") for g in env.get("gpus") or []) or None,
                   framework_version=framework.get("version"),
                   versions=", ".join(f"{k} {versions[k]}" for k in FRAMEWORK_PACKAGES if k in versions),
                   commit=(env.get("git") or {}).get("commit"))
        rows.append(row)
    df = pd.DataFrame(rows)
    for column in ("median_s", "q1_s", "q3_s", "iqr_s", "flops_per_s", "pct_peak", "params",
                   "params_expected", "params_source", "params_mismatch", "peak_memory_bytes",
                   "peak_memory_delta_bytes", "compile_s", "runs", "loops", "reason", "stable", "kind", "others_cpus"):
        if column not in df:
            df[column] = math.nan
    return df


# --- tables ------------------------------------------------------------------------------

def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return format(value, spec)


def results_table(df: pd.DataFrame) -> pd.DataFrame:
    """The human table: one row per record, times in ms, work in GFLOP/s."""
    ordered = df.sort_values(["machine", "device", "dtype", "causal", "d_model", "heads", "kv_heads",
                              "batch", "L_q", "L_k", "pass", "impl", "compile", "run_id"], kind="stable")
    length = ordered.apply(lambda r: f"{r.L_q}" if r.L_q == r.L_k else f"{r.L_q}x{r.L_k}", axis=1)
    return pd.DataFrame({
        "machine": ordered["machine"], "run": ordered["run_id"].fillna("").str[:RUN_ID_SHOWN],
        "device": ordered["device"], "impl": ordered["impl"],
        "compile": ordered["compile"], "pass": ordered["pass"].str.replace("forward_backward", "fwd+bwd"),
        "B": ordered["batch"], "L": length, "E": ordered["d_model"],
        "H/kv": ordered["heads"].astype(str) + "/" + ordered["kv_heads"].astype(str),
        "dtype": ordered["dtype"], "causal": ordered["causal"].map({True: "yes", False: ""}),
        "median ms": (ordered["median_s"] * 1e3).map(lambda v: _fmt(v, ".3g")),
        "IQR %": (100 * ordered["iqr_s"] / ordered["median_s"]).map(lambda v: _fmt(v, ".1f")),
        "runs×loops": [f"{int(r)}×{int(lp)}" if r == r else "" for r, lp in zip(ordered["runs"], ordered["loops"])],
        "stable": ordered["stable"].map(stable_text),
        "others' CPUs": ordered["others_cpus"].map(lambda v: _fmt(v, ".1f")),
        "compile s": ordered["compile_s"].map(lambda v: _fmt(v, ".3g")),
        "GFLOP/s": (ordered["flops_per_s"] / 1e9).map(lambda v: _fmt(v, ".3g")),
        "% peak": ordered["pct_peak"].map(lambda v: _fmt(v, ".1f")),
        "mem peak MiB": (ordered["peak_memory_bytes"] / 2**20).map(lambda v: _fmt(v, ".0f")),
        "mem +MiB": (ordered["peak_memory_delta_bytes"] / 2**20).map(lambda v: _fmt(v, ".1f")),
        "status": ordered["status"],
    })


def params_table(df: pd.DataFrame) -> pd.DataFrame:
    """Parameter count per implementation and shape, against the spec's formula."""
    have = df[df["params"].notna()]
    if have.empty:
        return pd.DataFrame(columns=["impl", "E", "H", "kv", "params", "spec formula", "counted from", "match"])
    rows = have.drop_duplicates(["impl", "d_model", "heads", "kv_heads"]).sort_values(
        ["d_model", "heads", "kv_heads", "impl"])
    return pd.DataFrame({
        "impl": rows["impl"], "E": rows["d_model"], "H": rows["heads"], "kv": rows["kv_heads"],
        "params": rows["params"].map(lambda v: f"{int(v):,}"),
        "spec formula": rows["params_expected"].map(lambda v: f"{int(v):,}"),
        "counted from": rows["params_source"],
        "match": rows["params_mismatch"].map({False: "yes", True: "MISMATCH"}),
    })


def problems_table(df: pd.DataFrame) -> pd.DataFrame:
    bad = df[df["status"] != "ok"]
    if bad.empty:
        return pd.DataFrame(columns=["machine", "impl", "status", "points", "reason"])
    grouped = bad.groupby(["machine", "impl", "status", "reason"], dropna=False).size().reset_index(name="points")
    return grouped[["machine", "impl", "status", "points", "reason"]]


def machines_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per machine and run: hardware, software, and how busy the machine was."""
    first = df.drop_duplicates(["machine", "run_id"])
    return pd.DataFrame({"machine": first["machine"], "run": first["run_id"], "started": first["timestamp"],
                         "cpu": first["cpu"],
                         "cpus": first["cpus"],
                         "threads cap": first["threads_cap"].map(lambda v: _fmt(v, ".0f") or "none"),
                         "load avg": first["load_avg"].map(lambda v: _fmt(v, ".1f")),
                         "gpu": first["gpu"].fillna(""), "commit": first["commit"].fillna("").str[:10],
                         "versions": first["versions"],
                         "records": df.groupby(["machine", "run_id"]).size().reindex(
                             list(zip(first["machine"], first["run_id"]))).values})


def stable_text(value) -> str:
    """The timer's ``stable`` flag in a table: "yes", "NO" (the spread never settled), or ""."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return "yes" if bool(value) else "NO"


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas' own needs the optional tabulate)."""
    def cell(value) -> str:
        text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")
    cells = [[cell(v) for v in row] for row in table.itertuples(index=False)]
    header = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


# --- plots -------------------------------------------------------------------------------

def fixed_parameters(ok: pd.DataFrame) -> tuple[str, list[str]]:
    """(title text, varying columns): the parameters every line shares go in the title."""
    fixed, varying = [], []
    for column, pattern in FIXED_COLUMNS.items():
        values = ok[column].dropna().unique()
        if len(values) == 1:
            fixed.append(pattern.format(values[0]))
        elif len(values) > 1:
            varying.append(column)
    heads = ok[["heads", "kv_heads"]].drop_duplicates()
    if len(heads) == 1 and "heads" not in varying and "kv_heads" not in varying:  # H=4/4kv reads better
        fixed = [f for f in fixed if not f.startswith(("H=", "kv heads="))]
        fixed.insert(2, f"H={heads.iloc[0, 0]}/{heads.iloc[0, 1]}kv")
    if ok["run_id"].nunique() > 1:
        varying.append("run_id")
    return ", ".join(fixed), varying


def _series_label(values: dict, varying: list[str]) -> str:
    extra = [f"run {str(values['run_id'])[:RUN_ID_SHOWN]}" if c == "run_id" else f"{c}={values[c]}"
             for c in varying]
    return " ".join([str(values["impl"])] + extra)


def _plot_vs_length(df: pd.DataFrame, y: str, ylabel: str, scale: float, title: str) -> bytes:
    """Rows: the passes; columns: the frameworks. One colour per implementation (and one
    marker per run, when there are several), error bars from the first to the third
    quartile. Our implementations are drawn solid and thick, the native ones dashed, the
    oracle dotted; the parameters all lines share are in the title."""
    ok = df[(df["status"] == "ok") & df[y].notna()]
    frameworks = [f for f in FRAMEWORK_ORDER if f in set(ok["framework"])] or ["(none)"]
    fig, axes = plt.subplots(len(PASSES), len(frameworks), figsize=(4.6 * len(frameworks) + 1, 9),
                             squeeze=False)
    fixed, _ = fixed_parameters(ok) if not ok.empty else ("", [])
    runs = list(dict.fromkeys(ok["run_id"])) if not ok.empty else []
    # The interquartile range of the time; for a rate (1 / time) the quartiles swap over.
    low, high = ("q1_s", "q3_s") if y == "median_s" else ("q3_s", "q1_s")
    for column, framework in enumerate(frameworks):
        part_fw = ok[ok["framework"] == framework]
        _, varying = fixed_parameters(part_fw) if not part_fw.empty else ("", [])
        impls = sorted(set(part_fw["impl"]))
        for row, pass_ in enumerate(PASSES):
            ax = axes[row][column]
            for key, series in part_fw[part_fw["pass"] == pass_].groupby(SERIES_COLUMNS, dropna=False):
                series = series.sort_values("L_q")
                values = dict(zip(SERIES_COLUMNS, key))
                centre = series[y] * scale
                below, above = _error_bars(series, y, low, high, scale, centre)
                run = runs.index(values["run_id"]) if values["run_id"] in runs else 0
                ax.errorbar(series["L_q"], centre, yerr=[below, above], capsize=3, markersize=5,
                            marker="osD^v"[run % 5], alpha=1.0 if run == 0 else 0.7,
                            color=plt.cm.tab10(impls.index(values["impl"]) % 10),
                            label=_series_label(values, varying),
                            **KIND_STYLE.get(series["kind"].iloc[0], KIND_STYLE["builtin"]))
            lengths = sorted(set(part_fw["L_q"]))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(lengths, [str(v) for v in lengths])
            ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
            ax.tick_params(axis="y", which="minor", labelsize=7)
            ax.grid(True, which="both", alpha=0.3)
            modes = sorted(set(part_fw["compile"]))
            ax.set_title(f"{framework} ({'/'.join(modes)}): {pass_.replace('_', ' + ')}", fontsize=10)
            if column == 0:
                ax.set_ylabel(ylabel)
        axes[-1][column].set_xlabel("sequence length L_q")
        handles, labels = axes[0][column].get_legend_handles_labels()
        if handles:
            axes[-1][column].legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                                    fontsize=7, frameon=False)
    fig.suptitle(f"{title}: {fixed}\nbars: interquartile range; solid: ours, dashed: native, dotted: oracle, "
                 f"dash-dot: plug-in" + ("; one marker per run" if len(runs) > 1 else ""), fontsize=10)
    return _png(fig)


def _error_bars(series: pd.DataFrame, y: str, low: str, high: str, scale: float, centre: pd.Series):
    """Distances below and above ``centre`` of the quartiles (zero where a record has none)."""
    if y == "median_s":
        lower, upper = series[low] * scale, series[high] * scale
    else:  # a rate: the work over the quartile times
        work = series[y] * series["median_s"]
        lower, upper = work / series[low] * scale, work / series[high] * scale
    below = (centre - lower).clip(lower=0).fillna(0)
    above = (upper - centre).clip(lower=0).fillna(0)
    return below.to_numpy(), above.to_numpy()


def _plot_params(table: pd.DataFrame) -> bytes:
    fig, ax = plt.subplots(figsize=(9, 0.4 + 0.3 * max(len(table), 1)))
    ax.axis("off")
    if len(table):
        cell = ax.table(cellText=table.values.tolist(), colLabels=list(table.columns), loc="center")
        cell.auto_set_font_size(False)
        cell.set_fontsize(8)
        cell.auto_set_column_width(list(range(len(table.columns))))
    else:
        ax.text(0.5, 0.5, "no parameter counts", ha="center")
    ax.set_title("Parameter count per implementation")
    return _png(fig)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


# --- the report --------------------------------------------------------------------------

def write_report(records: list[dict], out_dir, title: str = "attnsuite benchmark") -> list[Path]:
    """Write every report file for ``records`` into ``out_dir``; return their paths."""
    if not records:
        raise ValueError("no records to report")
    out = Path(out_dir)
    df = frame(records)
    results, params, problems = results_table(df), params_table(df), problems_table(df)
    machines = machines_table(df)
    figures = {
        "latency.png": _plot_vs_length(df, "median_s", "median latency (ms)", 1e3, "Latency"),
        "throughput.png": _plot_vs_length(df, "flops_per_s", "achieved GFLOP/s", 1e-9, "Throughput"),
        "params.png": _plot_params(params),
    }
    generated = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    sections = [("Machines", machines), ("Parameter counts", params), ("Results", results),
                ("Not measured", problems)]
    intro = (f"Generated {generated} from {len(df)} records. Times are the median of `runs` "
             f"timed blocks of `loops` calls (IQR % = interquartile range / median); compile s = "
             f"first call minus the median; stable: the spread settled within the time budget; "
             f"others' CPUs: how many CPUs other processes kept busy while the point was timed. "
             f"FLOPs: {FORMULA_VERSION}. % peak is against a "
             f"large matmul measured in the same process, framework and dtype. Memory: the peak of "
             f"the process's resident set (CPU) or of the device allocator (GPU) during one call "
             f"(mem peak), and its rise above the level before the call (mem +).")

    md = [f"# {title}", "", intro, ""]
    for name, table in sections:
        md += [f"## {name}", "", markdown(table) if len(table) else "(none)", ""]
    md += ["## Figures", "", "![latency](latency.png)", "", "![throughput](throughput.png)", "",
           "![parameters](params.png)", ""]

    page = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>",
            f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"]
    for name, table in sections:
        page += [f"<h2>{name}</h2>", table.to_html(index=False, na_rep="") if len(table) else "<p>(none)</p>"]
    page += ["<h2>Figures</h2>"] + [f"<p><img src='{name}' alt='{name}'></p>" for name in figures]
    page += ["</body></html>"]

    atomic_write_text(out / "bench.csv", df.drop(columns=["samples_s"], errors="ignore").to_csv(index=False))
    atomic_write_text(out / "bench.md", "\n".join(md))
    atomic_write_text(out / "bench.html", "\n".join(page))
    for name, png in figures.items():
        atomic_write_bytes(out / name, png)
    return [out / name for name in REPORT_FILES]


def merge(locations: Iterable, out_dir, keep: list[str] | None = None,
          drop: list[str] | None = None) -> list[Path]:
    """Merge the stores at ``locations`` into ``out_dir`` (its store and report), keeping
    the runs ``keep`` names (all by default) less those ``drop`` names."""
    locations = list(locations)
    out = Path(out_dir)
    if any(store.store_path(loc).resolve() == store.store_path(out).resolve() for loc in locations):
        raise ValueError(f"{out}: the output directory cannot also be an input")
    records = select_runs(store.load_many(locations), keep, drop)
    atomic_write_text(out / store.STORE_NAME, store.text_of(records))
    return write_report(records, out)
