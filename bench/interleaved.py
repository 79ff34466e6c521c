"""Two implementations timed in alternation in one process:
``attnsuite bench compare --interleaved BASE_IMPL CAND_IMPL [--sweep quick]``.

Two sweeps run one after the other on a shared machine see different loads; a drift
between them reads as a change of speed. Here, as in ``asv continuous``, the baseline and
the candidate take turns block by block at every point (``timing.measure_interleaved``),
so a drift touches both alike; each point's rounds then go through ``bench compare``'s
paired test (``compare.pair_up``: round i's two blocks are a pair). This is also how "ours against native"
is measured: ``--interleaved torch.sdpa torch.fused``.

How many rounds: as many as the answer needs, a group-sequential design (as in clinical
trials: a few interim looks fixed in advance, each allowed to stop the study). After ``MIN_ROUNDS`` rounds, and again after
twice, four, eight and sixteen times as many (``LOOKS`` looks, ``timing.look_schedule``),
the point's paired verdict is worked out (``compare.settled``); the point stops at the
first look where it is decided (``regressed``, ``improved`` or ``unchanged`` even after the
correction over the sweep's points), else at the last look or when ``POINT_TIME`` seconds
(``max_time``) are spent. Stopping when the answer looks good is optional stopping, which
left unpaid inflates the false alarms: here the number of looks is fixed before the run
and stored in every record (``looks``), and ``bench compare`` pays for all of them
(Bonferroni: p x looks, intervals at 1 - 0.05 / looks), so the chance of a false
``regressed`` stays at ``compare.ALPHA`` whatever the stopping rule did. Doubling the
rounds between looks keeps the looks few (5) while the last one has 16x the first's
samples: a clear case stops after 10-20 rounds, a hard one gets 160.

Both implementations must belong to one framework (one process; the frameworks never
share one) and agree on the environment they need. The run is in this process: the
framework's environment (threads, Keras backend, ...) is set before it is imported.
"""

from __future__ import annotations

import os
import uuid
from typing import Callable

from attnsuite.bench import compare, environment, flops, frameworks, store, timing
from attnsuite.bench.case import build
from attnsuite.bench.records import new_record
from attnsuite.bench.runner import FRAMEWORK_ENV, thread_env
from attnsuite.bench.sweeps import Budget, Config, Point, compile_modes
from attnsuite.impls.errors import Unsupported
from attnsuite.impls.registry import resolve

# A verdict rests on the samples: more rounds than a sweep's point gets on its own.
MIN_ROUNDS = 10
LOOKS = 5            # looks at 10, 20, 40, 80, 160 rounds
POINT_TIME = 30.0    # seconds of timing a point may take, both sides together, before it stops undecided
# A block lasts at least this long (the sweep's own ``min_block_time`` if longer). On a
# shared CPU a process is preempted for whole time slices of a few ms; a block of 2 ms is
# then either spared or doubled. A longer block averages over many slices: measured here
# (load 7-8 on 2 CPUs, A/A, L=128 forward), the interquartile range of the pairs' ratios
# was 0.61-1.43 with 2 ms blocks and 0.89-1.25 with 20 ms blocks.
BLOCK_TIME = 0.02


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 300 else text[:297] + "..."


def resolve_pair(base: str, cand: str):
    """Both (entry, factory); ``ValueError`` when they cannot share a process."""
    pair = [resolve(name) for name in (base, cand)]
    (a, _), (b, _) = pair
    if a.framework != b.framework:
        raise ValueError(f"--interleaved: {base} ({a.framework}) and {cand} ({b.framework}) run in different "
                         f"frameworks, which never share a process; compare two sweeps instead")
    clash = [k for k, v in a.env if dict(b.env).get(k, v) != v]
    if clash:
        raise ValueError(f"--interleaved: {base} and {cand} need different {', '.join(clash)}")
    return pair


def prepare_process(entries, threads: int | None, device: str) -> None:
    """The environment a worker of this framework would get, set before its import."""
    framework = entries[0].framework
    os.environ.update(FRAMEWORK_ENV.get(framework, {}))
    os.environ.update(thread_env(framework, threads))
    for entry in entries:
        os.environ.update(dict(entry.env))
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def run(base: str, cand: str, configs: list[Config], budget: Budget, compile: list[str], out_dir, *,
        threads: int | None = None, machine: str | None = None, min_rounds: int = MIN_ROUNDS,
        looks: int = LOOKS, threshold: float = 0.1, max_time: float = POINT_TIME,
        progress: Callable[[str], None] = lambda text: None) -> list[dict]:
    """Time ``base`` and ``cand`` side by side at every configuration, compile mode and pass,
    each point until its verdict at ``threshold`` is decided (see above); store the records
    in ``out_dir`` (one run) and return them."""
    compare.check_threshold(threshold)
    schedule = timing.look_schedule(max(min_rounds, budget.min_runs), looks)
    pair = resolve_pair(base, cand)
    entries = [entry for entry, _ in pair]
    framework = entries[0].framework
    prepare_process(entries, threads, configs[0].device if configs else "cpu")
    fw = frameworks.load(framework)
    fw.configure(threads)
    run_id = uuid.uuid4().hex[:12]
    env = dict(environment.collect(machine), run_id=run_id, threads=threads, interleaved=[base, cand])
    writer = store.RunWriter.for_store(out_dir, run_id, env)
    records = []
    modes = compile_modes(framework, compile)
    points_in_run = len(modes) * len(configs) * len(flops.PASSES)

    def decided(times: list[list[float]]) -> bool:
        if len(times) < 2:  # one side only: nothing to compare, the first look will do
            return True
        return compare.settled(times[0], times[1], threshold, looks=looks, points=points_in_run)

    def keep(point, pass_, status, entry, reason=None, **measured):
        measured.setdefault("role", point_roles[id(point)])
        info = fw.info(point.config.device)
        record = new_record(point, pass_, status, run_id=run_id, env=dict(env, framework=info),
                            framework=framework, kind=entry.kind, reason=reason, **measured)
        records.append(writer.append(record))

    for mode in modes:
        for config in configs:
            points = [Point(entry.name, config, mode) for entry in entries]
            point_roles = {id(points[0]): "baseline", id(points[1]): "candidate"}
            progress(f"{base} | {cand} [{mode}] {config.label()}")
            workloads = []
            for point, resolved in zip(points, pair):
                try:
                    workloads.append(build(resolved, config))
                except Unsupported as exc:
                    workloads.append(("unsupported", str(exc)))
                except Exception as exc:
                    workloads.append(("error", _short(exc)))
            for pass_ in flops.PASSES:
                prepared = []
                for point, entry, workload in zip(points, entries, workloads):
                    if isinstance(workload, tuple):
                        keep(point, pass_, workload[0], entry, workload[1])
                        continue
                    try:
                        call, block = workload.prepare(pass_, mode)
                        first = timing.first_call(call, block)
                        loops = timing.calibrate(call, block, min_block_time=max(budget.min_block_time, BLOCK_TIME))
                        prepared.append((point, entry, workload, call, block, loops, first))
                    except Unsupported as exc:
                        keep(point, pass_, "unsupported", entry, str(exc))
                    except Exception as exc:
                        keep(point, pass_, "error", entry, _short(exc))
                if not prepared:
                    continue
                # One number of calls per block for both: on a busy machine a block's chance
                # of being preempted grows with its length, and so would a difference of
                # loops bias the medians (measured: 1 vs 3 calls per block read 4x apart).
                loops = max(calibrated for *_, calibrated, _ in prepared)
                measurements = timing.measure_interleaved(
                    [(call, block, loops) for _, _, _, call, block, _, _ in prepared],
                    min_runs=schedule[0], max_time=max_time / len(prepared), decided=decided, looks=schedule)
                for (point, entry, workload, *_, first), m in zip(prepared, measurements):
                    work = flops.attention_flops(workload.spec, config.batch, config.L_q, config.L_k, pass_,
                                                 core=workload.core)
                    keep(point, pass_, "ok", entry, **m.stats(), first_call_s=first,
                         compile_s=max(first - m.median, 0.0), flops=work, flops_per_s=work / m.median,
                         flops_formula=flops.FORMULA_VERSION, role=point_roles[id(point)], looks=looks)
    return records
