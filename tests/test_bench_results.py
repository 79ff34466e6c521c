"""The results store, the merged report and the regression comparison, on synthetic records."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

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
            store.append({str(tmp_path)!r}, {{"record_id": str(i), "payload": payload}})
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


# --- compare -----------------------------------------------------------------------------

def _stores(tmp_path, old_records, new_records):
    old, new = tmp_path / "old", tmp_path / "new"
    for location, records in ((old, old_records), (new, new_records)):
        for r in records:
            store.append(location, r)
    return str(old), str(new)


@pytest.mark.parametrize("new_median, expected_exit", [
    (1.05e-3, 0),   # 5% slower: within a 10% threshold
    (0.5e-3, 0),    # faster
    (1.2e-3, 1),    # 20% slower: a regression
])
def test_compare_flags_a_slowdown_past_the_threshold(tmp_path, new_median, expected_exit):
    old, new = _stores(tmp_path, [record(L=64), record(L=128, median=1e-3)],
                       [record(L=64), record(L=128, median=new_median)])
    assert cli.main(["compare", old, new, "--threshold", "0.1"]) == expected_exit, \
        f"old 1 ms -> new {new_median * 1e3} ms"


def test_compare_flags_a_point_that_stopped_working(tmp_path):
    old, new = _stores(tmp_path, [record()], [record(status="error")])
    assert cli.main(["compare", old, new]) == 1


def test_compare_takes_the_latest_record_of_a_point(tmp_path):
    slow, fast = record(median=5e-3), record(median=1e-3)
    slow["timestamp"], fast["timestamp"] = "2024-01-01T00:00:00+00:00", "2024-06-01T00:00:00+00:00"
    old, new = _stores(tmp_path, [record(median=1e-3)], [fast, slow])
    assert cli.main(["compare", old, new]) == 0


def test_compare_with_nothing_in_common_is_a_usage_error(tmp_path):
    old, new = _stores(tmp_path, [record("alpha")], [record("beta")])
    assert cli.main(["compare", old, new]) == 2


def test_store_lines_are_json(tmp_path):
    store.append(tmp_path, record())
    line = store.store_path(tmp_path).read_text().splitlines()[0]
    assert json.loads(line)["machine"] == "alpha"
