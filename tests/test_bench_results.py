"""The results store, the merged report and the regression comparison, on synthetic records."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attnsuite.bench import cli, report, store
from attnsuite.bench.records import new_record
from attnsuite.bench.sweeps import Config, Point

CONFIG = Config(batch=1, L_q=128, L_k=128, d_model=64, heads=4, kv_heads=4, dtype="float32",
                causal=False, device="cpu")


def record(machine="alpha", impl="numpy.oracle", L=128, median=1e-3, status="ok", pass_="forward"):
    point = Point(impl, Config(**{**CONFIG.to_dict(), "L_q": L, "L_k": L}), "eager")
    measured = {}
    if status == "ok":
        measured = {"median_s": median, "q1_s": 0.95 * median, "q3_s": 1.05 * median,
                    "iqr_s": 0.1 * median, "runs": 5, "loops": 1, "compile_s": 0.0,
                    "flops_per_s": 1e9, "pct_peak": 10.0, "peak_memory_bytes": 2**20,
                    "params": 16_640, "params_expected": 16_640, "params_source": "params",
                    "params_mismatch": False}
    return new_record(point, pass_, status, run_id="r1", env={"machine": machine, "cpu": f"{machine}-cpu"},
                      framework="numpy", kind="oracle", reason=None if status == "ok" else "boom", **measured)


# --- store -------------------------------------------------------------------------------

def test_records_round_trip(tmp_path):
    written = [record(L=L) for L in (64, 128, 256)]
    for r in written:
        store.append(tmp_path, r)
    assert store.load(tmp_path) == written


def test_a_torn_last_line_is_skipped_and_the_next_append_is_clean(tmp_path):
    first = record(L=64)
    store.append(tmp_path, first)
    with open(store.store_path(tmp_path), "a") as f:  # a writer killed mid-record
        f.write(store.dumps(record(L=128))[:40])
    with pytest.warns(UserWarning, match="incomplete record"):
        assert store.load(tmp_path) == [first]
    after = record(L=256)
    store.append(tmp_path, after)
    with pytest.warns(UserWarning, match="incomplete record"):
        assert store.load(tmp_path) == [first, after]


def test_records_survive_a_killed_writer(tmp_path):
    """A process appending records in a loop is killed: every record on disk is whole."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from attnsuite.bench import store
        payload = "x" * 20000  # records far larger than a pipe buffer or a page
        for i in range(10**9):
            store.append({str(tmp_path)!r}, {{"record_id": str(i), "impl": "x", "pass": "forward",
                                              "status": "error", "payload": payload}})
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if int(line) >= 30:
                break
    finally:
        proc.kill()
        proc.wait()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a torn line would warn
        records = store.load(tmp_path)
    assert len(records) >= 31
    assert [r["record_id"] for r in records] == [str(i) for i in range(len(records))]


# --- report ------------------------------------------------------------------------------

def test_report_merges_two_machines_keeping_each(tmp_path):
    alpha, beta, out = tmp_path / "alpha", tmp_path / "beta", tmp_path / "merged"
    for L, median in ((64, 1e-3), (128, 3e-3)):
        store.append(alpha, record("alpha", L=L, median=median))
        store.append(beta, record("beta", L=L, median=2 * median))
    store.append(beta, record("beta", impl="torch.fused", status="error"))

    assert cli.report_main([str(alpha), str(beta), "--out", str(out)]) == 0

    for name in report.REPORT_FILES:
        assert (out / name).stat().st_size > 0, f"{name} is missing or empty"
    merged = store.load(out)
    assert len(merged) == 5
    csv = pd.read_csv(out / "bench.csv")
    for machine, factor in (("alpha", 1), ("beta", 2)):
        rows = csv[(csv["machine"] == machine) & (csv["status"] == "ok")].sort_values("L_q")
        assert list(rows["median_s"]) == pytest.approx([factor * 1e-3, factor * 3e-3]), \
            f"{machine}'s rows lost their machine or their values:\n{rows}"
    assert set(csv["cpu"]) == {"alpha-cpu", "beta-cpu"}
    text = (out / "bench.md").read_text()
    assert "| alpha |" in text and "| beta |" in text and "boom" in text


def test_report_refuses_to_merge_into_an_input(tmp_path):
    store.append(tmp_path, record())
    assert cli.report_main([str(tmp_path), "--out", str(tmp_path)]) == 2


# --- compare (the verdict logic itself: tests/test_bench_compare.py) ----------------------

def _stores(tmp_path, old_records, new_records):
    old, new = tmp_path / "old", tmp_path / "new"
    for location, records in ((old, old_records), (new, new_records)):
        for r in records:
            store.append(location, r)
    return str(old), str(new)


def sampled(median, spread=0.02, n=20, seed=0, **kwargs):
    """A record whose samples scatter uniformly within ``spread`` of ``median``."""
    r = record(median=median, **kwargs)
    samples = median * (1 + spread * np.random.default_rng(seed).uniform(-1, 1, n))
    r.update(samples_s=list(samples), median_s=float(np.median(samples)), stable=True)
    return r


@pytest.mark.parametrize("factor, expected_exit", [
    (1.05, 0),   # 5% slower: within a 10% threshold
    (0.5, 0),    # faster
    (1.5, 1),    # 50% slower, clearly: a regression
])
def test_compare_exits_1_only_for_a_significant_slowdown_past_the_threshold(tmp_path, factor, expected_exit):
    old, new = _stores(tmp_path, [sampled(1e-3, L=64, seed=1), sampled(1e-3, L=128, seed=2)],
                       [sampled(1e-3, L=64, seed=3), sampled(factor * 1e-3, L=128, seed=4)])
    assert cli.main(["compare", old, new, "--threshold", "0.1"]) == expected_exit, f"new = {factor} x old"


def test_compare_does_not_fail_on_noise(tmp_path):
    """The old 18x "regression": one slow outlier block moves nothing."""
    noisy = sampled(1e-3, spread=0.05, seed=5)
    noisy["samples_s"][:3] = [18e-3, 20e-3, 25e-3]
    noisy["stable"] = False
    old, new = _stores(tmp_path, [sampled(1e-3, seed=6)], [noisy])
    assert cli.main(["compare", old, new]) == 0


def test_compare_flags_a_point_that_stopped_working(tmp_path):
    old, new = _stores(tmp_path, [record()], [record(status="error")])
    assert cli.main(["compare", old, new]) == 1


def test_compare_takes_the_latest_record_of_a_point(tmp_path):
    slow, fast = sampled(5e-3, seed=7), sampled(1e-3, seed=8)
    slow["timestamp"], fast["timestamp"] = "2024-01-01T00:00:00+00:00", "2024-06-01T00:00:00+00:00"
    old, new = _stores(tmp_path, [sampled(1e-3, seed=9)], [fast, slow])
    assert cli.main(["compare", old, new]) == 0


def test_compare_with_nothing_in_common_is_a_usage_error(tmp_path):
    old, new = _stores(tmp_path, [record("alpha")], [record("beta")])
    assert cli.main(["compare", old, new]) == 2


@pytest.mark.parametrize("threshold", ["nan", "inf", "-inf", "0", "-0.1", "ten"])
def test_compare_refuses_a_threshold_that_is_not_a_positive_fraction(tmp_path, capsys, threshold):
    old, new = _stores(tmp_path, [sampled(1e-3)], [sampled(3e-3)])
    assert cli.main(["compare", old, new, "--threshold", threshold]) == 2
    assert "--threshold" in capsys.readouterr().err


def test_compare_writes_its_verdicts_as_json(tmp_path):
    old, new = _stores(tmp_path, [sampled(1e-3, seed=1)], [sampled(2e-3, seed=2)])
    assert cli.main(["compare", old, new, "--json", str(tmp_path / "v.json")]) == 1
    [point] = json.loads((tmp_path / "v.json").read_text())
    assert point["verdict"] == "regressed" and point["samples"] == [20, 20]
    assert point["ci"][0] > 1.1 and point["stable"] == [True, True]


def test_store_lines_are_json(tmp_path):
    store.append(tmp_path, record())
    line = store.store_path(tmp_path).read_text().splitlines()[0]
    assert json.loads(line)["machine"] == "alpha"


# --- runs: the environment once, reports grouped by run ----------------------------------

def _write_run(location, run_id, records, env=None):
    env = env or {"machine": "alpha", "cpu": "alpha-cpu", "versions": {"numpy": "2"}}
    writer = store.RunWriter.for_store(location, run_id, env)
    for r in records:
        r = dict(r, run_id=run_id)
        r["env"] = dict(env, framework={"name": "numpy", "threads": 1})  # what a worker adds
        writer.append(r)


def test_the_environment_is_stored_once_per_run_and_joined_on_load(tmp_path):
    _write_run(tmp_path, "run1", [sampled(1e-3, L=L) for L in (64, 128, 256)])
    lines = [json.loads(line) for line in store.store_path(tmp_path).read_text().splitlines()]
    assert [line["type"] for line in lines] == ["run", "env", "point", "point", "point"]
    assert not any("env" in line for line in lines if line["type"] == "point")
    assert lines[1]["env"] == {"framework": {"name": "numpy", "threads": 1}}, "only the worker's addition"
    loaded = store.load(tmp_path)
    assert len(loaded) == 3 and all(r["env"]["cpu"] == "alpha-cpu" and r["env"]["framework"]["threads"] == 1
                                    for r in loaded)
    assert all(len(r["samples_s"]) == 20 for r in loaded), "the raw samples are kept"


def test_two_runs_into_one_directory_stay_two_runs(tmp_path):
    out = tmp_path / "report"
    _write_run(tmp_path / "a", "1111aaaa", [sampled(1e-3, L=L) for L in (64, 128)])
    _write_run(tmp_path / "a", "2222bbbb", [sampled(2e-3, L=L) for L in (64, 128)])
    assert cli.report_main([str(tmp_path / "a"), "--out", str(out)]) == 0
    csv = pd.read_csv(out / "bench.csv")
    assert sorted(csv.groupby("run_id")["median_s"].median().round(4)) == [0.001, 0.002]
    df = report.frame(store.load(out))
    assert "run_id" in report.fixed_parameters(df)[1], "the plot would draw one line through both runs"
    table = report.results_table(df)
    assert sorted(set(table["run"])) == ["1111aaaa", "2222bbbb"]
    assert len([line for line in store.store_path(out).read_text().splitlines() if '"type": "run"' in line]) == 2


@pytest.mark.parametrize("flag, kept", [("--run", {"2222bbbb"}), ("--drop-run", {"1111aaaa"})])
def test_a_run_is_selected_or_dropped_by_its_id(tmp_path, flag, kept):
    _write_run(tmp_path / "a", "1111aaaa", [sampled(1e-3)])
    _write_run(tmp_path / "a", "2222bbbb", [sampled(2e-3)])
    assert cli.report_main([str(tmp_path / "a"), flag, "2222", "--out", str(tmp_path / "out")]) == 0
    assert {r["run_id"] for r in store.load(tmp_path / "out")} == kept


def test_an_unknown_run_id_is_one_line(tmp_path, capsys):
    _write_run(tmp_path / "a", "1111aaaa", [sampled(1e-3)])
    assert cli.report_main([str(tmp_path / "a"), "--run", "9999", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "9999" in err and "1111aaaa" in err and len(err.splitlines()) == 1


def test_a_store_of_the_first_format_is_read(tmp_path):
    """bench.json, the environment inside every record, no samples: read as it is."""
    old = record()
    (tmp_path / "bench.json").write_text(json.dumps(old) + "\n")
    assert store.load(tmp_path) == [old]
    out = tmp_path / "out"
    assert cli.report_main([str(tmp_path), "--out", str(out)]) == 0
    assert (out / store.STORE_NAME).exists()


@pytest.mark.parametrize("line, complaint", [
    ('{"impl": "x", "pass": "forward", "status": "ok", "median_s": "fast", "q1_s": 1, "q3_s": 1}', "median_s"),
    ('{"impl": "x", "pass": "forward", "status": "ok", "median_s": 1, "q1_s": 1, "q3_s": 1, '
     '"samples_s": [1, -2]}', "samples_s"),
    ('{"pass": "forward", "status": "ok"}', "no impl"),
    ('[1, 2]', "JSON object"),
    ('{"type": "bogus"}', "unknown line type"),
])
def test_a_malformed_record_is_reported_with_file_and_line(tmp_path, capsys, line, complaint):
    good = store.dumps(record())
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / store.STORE_NAME).write_text(good + line + "\n")
    new = tmp_path / "new"
    store.append(new, record())
    for command in (lambda: cli.main(["compare", str(tmp_path / "old"), str(new)]),
                    lambda: cli.report_main([str(tmp_path / "old"), "--out", str(tmp_path / "out")])):
        status = command()
        err = capsys.readouterr().err.strip()
        assert status == 2 and f"{store.STORE_NAME}:2:" in err and complaint in err, err
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists(), "a report was (half) written"


# --- pytest-benchmark's JSON ---------------------------------------------------------------

def _pytest_benchmark_file(path, factor, data=True, seed=0):
    benchmarks = []
    for L in (64, 128):
        values = sampled(factor * 1e-3, L=L, seed=seed + L)["samples_s"]
        stats = {"median": float(np.median(values)), "q1": float(np.quantile(values, 0.25)),
                 "q3": float(np.quantile(values, 0.75)), "min": min(values), "max": max(values),
                 "mean": float(np.mean(values)), "stddev": float(np.std(values)), "rounds": len(values)}
        if data:
            stats["data"] = values
        extra = {"impl": "numpy.oracle", "compile": "eager", "pass": "forward",
                 **{**CONFIG.to_dict(), "L_q": L, "L_k": L}}
        benchmarks.append({"name": f"test_attention[{L}]", "fullname": f"bench/x.py::test_attention[{L}]",
                           "stats": stats, "extra_info": extra})
    path.write_text(json.dumps({"machine_info": {"node": "alpha"}, "commit_info": {"id": "abc"},
                                "benchmarks": benchmarks, "datetime": "2026-01-01T00:00:00",
                                "version": "5.3.1"}, indent=4))
    return str(path)


def test_compare_reads_pytest_benchmark_json(tmp_path, capsys):
    base = _pytest_benchmark_file(tmp_path / "base.json", 1.0)
    assert cli.main(["compare", base, _pytest_benchmark_file(tmp_path / "same.json", 1.0, seed=1)]) == 0
    assert cli.main(["compare", base, _pytest_benchmark_file(tmp_path / "slow.json", 2.0, seed=2)]) == 1
    assert "2 regressed" in capsys.readouterr().out
    no_data = _pytest_benchmark_file(tmp_path / "nodata.json", 2.0, data=False)
    assert cli.main(["compare", base, no_data]) == 0
    assert "2 uncertain" in capsys.readouterr().out


def test_a_pytest_benchmark_file_is_refused_by_report_in_one_line(tmp_path, capsys):
    path = _pytest_benchmark_file(tmp_path / "pb.json", 1.0)
    assert cli.report_main([path, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pytest-benchmark" in err and len(err.splitlines()) == 1, err


def test_a_truncated_pytest_benchmark_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "pb.json"
    text = Path(_pytest_benchmark_file(path, 1.0)).read_text()
    path.write_text(text[: len(text) // 2])
    assert cli.main(["compare", str(path), str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "pb.json" in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_a_new_run_into_a_directory_of_the_first_format_goes_to_its_own_file(tmp_path):
    old = record()
    (tmp_path / "bench.json").write_text(json.dumps(old) + "\n")
    _write_run(tmp_path, "newrun", [sampled(1e-3)])
    assert (tmp_path / "bench.json").read_text() == json.dumps(old) + "\n", "the old file was written to"
    assert [r["run_id"] for r in store.load(tmp_path)] == ["r1", "newrun"]


def test_compare_finds_pytest_benchmark_json_saved_as_bench_json_in_a_directory(tmp_path):
    """The old clash: pytest-benchmark's file under the harness's first-format name."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _pytest_benchmark_file(tmp_path / "a" / "bench.json", 1.0)
    _pytest_benchmark_file(tmp_path / "b" / "bench.json", 2.0, seed=5)
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 1


@pytest.mark.parametrize("seconds", ["nan", "inf", "0", "-1"])
def test_interleaved_compare_refuses_a_time_limit_that_is_not_a_positive_number(tmp_path, capsys, seconds):
    assert cli.main(["compare", "--interleaved", "numpy.oracle", "numpy.oracle", "--max-time", seconds,
                     "--out", str(tmp_path)]) == 2
    assert "--max-time" in capsys.readouterr().err
