"""One benchmark process for one framework: ``python -m attnsuite.bench.worker`` < job.json.

The job (JSON on stdin) names the framework, the points, the budget, the run id and the
environment; the worker streams one JSON message per line back on its original stdout:
``{"event": "start", "index": i}`` before point i, ``{"event": "record", "record": {...}}``
for each pass measured, and ``{"event": "done"}``. Everything else a framework prints
goes to stderr, so the channel stays parseable.

Per point: build the case (``attnsuite.bench.case``: weights and inputs converted once), then for
each pass: the first call apart (compile), the parameter count, the calibrated
measurement, and a separate memory pass.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

from attnsuite import sanitize
from attnsuite.bench import flops, frameworks, timing
from attnsuite.bench.case import Workload, build
from attnsuite.bench.records import new_record
from attnsuite.bench.sweeps import Budget, Point
from attnsuite.impls.errors import PluginError, Unsupported
from attnsuite.impls.registry import resolve
from attnsuite.impls.weights import param_count
from attnsuite.processes import worker_channel

MATMUL_SIZE = {"cpu": 1024, "gpu": 8192}
# Calls a pass makes besides its timed runs: first call, warm-up, calibration, memory pass.
OVERHEAD_CALLS = 5


def _short(exc: BaseException) -> str:
    return sanitize.one_line(f"{type(exc).__name__}: {exc}")


class Worker:
    def __init__(self, job: dict[str, Any], emit):
        self.framework = job["framework"]
        self.points = [Point.from_dict(p) for p in job["points"]]
        self.budget = Budget(**job["budget"])
        self.run_id = job["run_id"]
        self.env = job["env"]
        self.threads = job.get("threads")
        self.emit = emit
        self.fw = None
        self.factories: dict[str, Any] = {}
        self.infos: dict[str, dict] = {}
        self.peaks: dict[tuple[str, str], tuple[float | None, str]] = {}
        self.history: dict[tuple, tuple[int, str, float | None]] = {}  # (series, pass) -> last outcome

    # --- records --------------------------------------------------------------------
    def _record(self, point: Point, pass_: str, status: str, *, kind=None, reason=None, **measured):
        env = dict(self.env, framework=self._info(point.config.device))
        record = new_record(point, pass_, status, run_id=self.run_id, env=env,
                            framework=self.framework, kind=kind, reason=reason, **measured)
        self.emit({"event": "record", "record": record})
        return record

    def _info(self, device: str) -> dict:
        if self.fw is None:
            return {"name": self.framework}
        if device not in self.infos:
            try:
                self.infos[device] = self.fw.info(device)
            except Exception as exc:  # the environment must never cost the measurement
                self.infos[device] = {"name": self.framework, "info_error": _short(exc)}
        return self.infos[device]

    def _fail_all(self, point: Point, status: str, reason: str, kind=None):
        for pass_ in flops.PASSES:
            self._record(point, pass_, status, kind=kind, reason=reason)

    # --- setup ----------------------------------------------------------------------
    def load_framework(self) -> None:
        self.fw = frameworks.load(self.framework)
        self.fw.configure(self.threads)

    def run(self) -> None:
        try:
            self.load_framework()
        except Exception as exc:
            reason = f"{self.framework} does not load: {_short(exc)}"
            for index, point in enumerate(self.points):
                self.emit({"event": "start", "index": index})
                self._fail_all(point, "error", reason)
            return
        for point in self.points:  # imports happen before the first point's clock starts
            self._factory(point.impl)
        for index, point in enumerate(self.points):
            self.emit({"event": "start", "index": index})
            self.measure_point(point)

    def _factory(self, name: str):
        if name not in self.factories:
            try:
                self.factories[name] = resolve(name)
            except PluginError as exc:
                self.factories[name] = exc
        return self.factories[name]

    def _peak(self, dtype: str, device: str) -> tuple[float | None, str]:
        """FLOP/s of a large matmul in this framework, dtype and device (measured once)."""
        if (dtype, device) not in self.peaks:
            n = MATMUL_SIZE[device]
            try:
                call, block = self.fw.matmul(n, dtype, device)
                timing.first_call(call, block)
                m = timing.measure(call, block, max_time=0.3, min_runs=5)
                # The fastest block: a peak is the best the machine gave, not its typical rate.
                self.peaks[dtype, device] = (2 * n ** 3 / min(m.times),
                                             f"{self.framework} {n}x{n} {dtype} matmul, fastest of {m.runs} blocks")
            except Exception as exc:
                self.peaks[dtype, device] = (None, f"matmul failed: {_short(exc)}")
        return self.peaks[dtype, device]

    # --- one point ------------------------------------------------------------------
    def measure_point(self, point: Point) -> None:
        resolved = self._factory(point.impl)
        if isinstance(resolved, Exception):
            return self._fail_all(point, "error", str(resolved))
        entry = resolved[0]
        try:
            case = build(resolved, point.config)
        except Unsupported as exc:
            return self._fail_all(point, "unsupported", str(exc), entry.kind)
        except Exception as exc:
            return self._fail_all(point, "oom" if self.fw.is_oom(exc) else "error", _short(exc), entry.kind)

        shared = {"params_expected": 0 if case.core else param_count(case.spec),
                  "flops_formula": flops.FORMULA_VERSION + (" (core only)" if case.core else ""),
                  "compile_detail": self.fw.COMPILE.get(point.compile)}
        for pass_ in flops.PASSES:
            skip = self._predicted_skip(point, pass_)
            if skip:
                self._record(point, pass_, skip[0], kind=entry.kind, reason=skip[1], **shared)
                continue
            try:
                measured = self._measure_pass(case, point, pass_, shared)
                status, reason = "ok", None
            except Unsupported as exc:
                measured, status, reason = {}, "unsupported", str(exc)
            except Exception as exc:
                measured, status = {}, "oom" if self.fw.is_oom(exc) else "error"
                reason = _short(exc)
                traceback.print_exc(file=sys.stderr)
            record = self._record(point, pass_, status, kind=entry.kind, reason=reason, **shared, **measured)
            self.history[point.series, pass_] = (point.area, status, record.get("median_s"))

    def _predicted_skip(self, point: Point, pass_: str) -> tuple[str, str] | None:
        """Skip a size the same series already failed at a smaller size, or would overrun."""
        last = self.history.get((point.series, pass_))
        if last is None:
            return None
        area, status, median = last
        if status in ("oom", "over_budget", "timeout"):
            return "over_budget", f"skipped: a smaller size of this series ended {status}"
        if status == "ok" and median:
            predicted = median * point.area / area * (self.budget.min_runs + OVERHEAD_CALLS)
            if predicted > self.budget.point_timeout:
                return "over_budget", (f"skipped: predicted {predicted:.0f} s > {self.budget.point_timeout:.0f} s "
                                       f"(quadratic in length from the last size)")
        return None

    def _measure_pass(self, case: Workload, point: Point, pass_: str, shared: dict) -> dict:
        c = point.config
        call, block = case.prepare(pass_, point.compile)
        first = timing.first_call(call, block)
        if "params" not in shared:  # after a first call: layers may build their weights lazily
            count, source = case.count_params()
            shared.update(params=count, params_source=source,
                          params_mismatch=count != shared["params_expected"])
        m = timing.measure(call, block, max_time=self.budget.max_time, min_runs=self.budget.min_runs,
                           min_block_time=self.budget.min_block_time)
        before = self.fw.reset_peak_memory(c.device)
        block(call())
        peak, method = self.fw.peak_memory(c.device)
        compiled = {}
        if self.budget.compiled_memory:
            compiled_bytes, compiled_method = self.fw.compiled_memory(call)
            compiled = {"compiled_temp_bytes": compiled_bytes, "compiled_memory_method": compiled_method}

        work = flops.attention_flops(case.spec, c.batch, c.L_q, c.L_k, pass_, core=case.core)
        peak_flops, peak_source = self._peak(c.dtype, c.device)
        achieved = work / m.median
        return {**m.stats(), "first_call_s": first, "compile_s": max(first - m.median, 0.0),
                "flops": work, "flops_per_s": achieved,
                "peak_flops_per_s": peak_flops, "peak_source": peak_source,
                "pct_peak": 100 * achieved / peak_flops if peak_flops else None,
                "peak_memory_bytes": peak, "memory_before_bytes": before,
                "peak_memory_delta_bytes": peak - before if peak is not None and before is not None else None,
                "memory_method": method, **compiled}


def main() -> int:
    job, emit = worker_channel(default=lambda v: v.item() if hasattr(v, "item") else str(v))
    Worker(job, emit).run()
    emit({"event": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
