"""The harness end to end on the NumPy oracle: the quick sweep's report files, and a
sweep that goes on past a worker that crashes or hangs.

The crashing and hanging implementations below are plug-ins the worker process imports
(``numpy:tests.test_bench_runner:...``): the oracle, except at one sequence length.
"""

from __future__ import annotations

import os
import time

import pytest

from attnsuite.bench.runner import Runner
from attnsuite.bench import store
from attnsuite.bench.store import load
from attnsuite.bench.sweeps import Budget, Config
from attnsuite.impls import oracle

TRIGGER_LENGTH = 16
LENGTHS = (8, TRIGGER_LENGTH, 32)


def _oracle_except_at_trigger(spec, action):
    inner = oracle.factory(spec)

    def fn(params, query, key, value, mask=None, bias=None):
        if query.shape[1] == TRIGGER_LENGTH:
            action()
        return inner(params, query, key, value, mask, bias)
    fn.vjp = inner.vjp
    return fn


def crashing(spec):
    return _oracle_except_at_trigger(spec, lambda: os._exit(3))


def hanging(spec):
    return _oracle_except_at_trigger(spec, lambda: time.sleep(600))


def test_quick_sweep_on_the_oracle_writes_every_report_file(tmp_path):
    from attnsuite.bench import cli, report  # pandas and matplotlib: not for the plug-in's worker to import

    # One thread: a 2-thread BLAS on a busy 2-core machine slows down tenfold.
    assert cli.main(["numpy.oracle", "--sweep", "quick", "--threads", "1", "--out", str(tmp_path)]) == 0
    for name in report.REPORT_FILES:
        assert (tmp_path / name).stat().st_size > 0, f"{name} is missing or empty"
    records = load(tmp_path)
    assert {(r["L_q"], r["pass"]) for r in records} == {(L, p) for L in (128, 512)
                                                          for p in ("forward", "forward_backward")}
    for r in records:
        where = f"{r['impl']} L={r['L_q']} {r['pass']}"
        assert r["status"] == "ok", f"{where}: {r['status']}: {r['reason']}"
        assert r["q1_s"] <= r["median_s"] <= r["q3_s"], f"{where}: median outside its IQR"
        assert r["runs"] >= 5 and r["loops"] >= 1, where
        assert r["params"] == r["params_expected"] and not r["params_mismatch"], where
        assert r["env"]["framework"]["name"] == "numpy" and r["env"]["versions"]["numpy"], where
        assert len(r["samples_s"]) == r["runs"] and isinstance(r["stable"], bool), where
    lines = store.store_path(tmp_path).read_text().splitlines()
    assert sum('"type": "run"' in line for line in lines) == 1 and sum('"env"' in line for line in lines) <= 2, \
        "the environment is stored once per run (and once per framework process)"
    assert "numpy.oracle" in (tmp_path / "bench.md").read_text()


@pytest.mark.parametrize("plugin, status", [("crashing", "crashed"), ("hanging", "timeout")])
def test_sweep_goes_on_past_a_dead_worker(tmp_path, plugin, status):
    configs = [Config(1, L, L, 8, 2, 2, "float32", False, "cpu") for L in LENGTHS]
    budget = Budget(max_time=0.02, min_runs=3, point_timeout=3.0, min_block_time=1e-3)
    name = f"numpy:tests.test_bench_runner:{plugin}"
    records = Runner(tmp_path, budget, threads=1).run([name, "numpy.oracle"], configs, ["natural"])

    outcome = {(r["impl"], r["L_q"], r["pass"]): r["status"] for r in records}
    for pass_ in ("forward", "forward_backward"):
        assert outcome[name, 8, pass_] == "ok", outcome
        assert outcome[name, TRIGGER_LENGTH, pass_] == status, outcome
        assert outcome[name, 32, pass_] == "over_budget", outcome  # the larger size is not tried
        for L in LENGTHS:  # a fresh worker carries on with the other implementation
            assert outcome["numpy.oracle", L, pass_] == "ok", outcome
    assert len(load(tmp_path)) == len(records) == 2 * 2 * len(LENGTHS)


def test_an_interrupted_sweep_keeps_its_records_and_leaves_no_worker_behind(tmp_path, monkeypatch):
    """Ctrl-C, or `timeout` in .ci/gpu: the worker runs in a session of its own, so the
    runner must end it; every record stored before the interrupt stays."""
    import subprocess

    from attnsuite import processes

    started, real_popen = [], subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    def interrupt_after_the_first_record(event, payload):
        if event == "record":
            raise KeyboardInterrupt

    monkeypatch.setattr(processes.subprocess, "Popen", popen)
    configs = [Config(1, L, L, 8, 2, 2, "float32", False, "cpu") for L in LENGTHS]
    budget = Budget(max_time=0.02, min_runs=3, point_timeout=30.0, min_block_time=1e-3)
    with pytest.raises(KeyboardInterrupt):
        Runner(tmp_path, budget, threads=1, progress=interrupt_after_the_first_record).run(
            ["numpy.oracle"], configs, ["natural"])
    assert started and all(proc.poll() is not None for proc in started), "a worker outlived the sweep"
    assert len(load(tmp_path)) == 1


@pytest.fixture
def own_environment():
    """``interleaved.run`` sets up the process it runs in as a worker (threads, devices):
    give the environment back, so that the tests after it in this process are not run so."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_interleaved_run_times_baseline_and_candidate_in_one_run(tmp_path, own_environment):
    from attnsuite.bench import compare, interleaved

    configs = [Config(1, L, L, 8, 2, 2, "float32", False, "cpu") for L in (8, 16)]
    budget = Budget(max_time=0.02, min_runs=5, point_timeout=30.0, min_block_time=1e-3)
    records = interleaved.run("numpy.oracle", "numpy.oracle", configs, budget, ["natural"], tmp_path, threads=1,
                              max_time=0.5)
    assert len(records) == len(load(tmp_path)) == 2 * 2 * 2
    assert len({r["run_id"] for r in records}) == 1
    for pass_ in ("forward", "forward_backward"):
        for L in (8, 16):
            pair = [r for r in records if r["pass"] == pass_ and r["L_q"] == L]
            assert sorted(r["role"] for r in pair) == ["baseline", "candidate"]
            assert pair[0]["runs"] == pair[1]["runs"] == len(pair[0]["samples_s"]) >= 5, "not taken in turns"
    assert len(compare.pair_up(records, 0.1)) == 4
    assert all(r["runs"] >= interleaved.MIN_ROUNDS and r["looks"] == interleaved.LOOKS for r in records)
    for pass_ in ("forward", "forward_backward"):
        assert len({r["loops"] for r in records if r["pass"] == pass_ and r["L_q"] == 8}) == 1, "loops differ"


def test_interleaving_needs_one_framework(tmp_path):
    from attnsuite.bench import interleaved

    with pytest.raises(ValueError, match="different frameworks"):
        interleaved.resolve_pair("numpy.oracle", "torch.sdpa")
