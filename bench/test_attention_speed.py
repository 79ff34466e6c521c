"""Every installed implementation timed through pytest-benchmark.

    pytest bench/ --benchmark-json=out/pytest-benchmark.json --benchmark-save-data   # small shapes
    pytest bench/ -m slow                                # the length sweep
    pytest bench/ --benchmark-compare --benchmark-compare-fail=median:10%
    attnsuite bench compare out/base.json out/pytest-benchmark.json   # a test per point on the samples

pytest-benchmark's file is one JSON document (not the harness's ``records.jsonl``);
``--benchmark-save-data`` keeps each round's time, which ``attnsuite bench compare``
needs for its verdicts.

The call is the one the harness times (``attnsuite.bench.case``). Compilation and warm-up happen
before the fixture is called, and each round runs a calibrated number of calls, so the
rounds measure the steady state only. The configuration, FLOPs, compile time, parameter
count and achieved GFLOP/s go into ``benchmark.extra_info``.
"""

from __future__ import annotations

import os

import pytest

from attnsuite.bench import flops, timing
from attnsuite.bench.case import build
from attnsuite.bench.sweeps import NATURAL_COMPILE, Config
from attnsuite.impls.backends import framework_status
from attnsuite.impls.errors import Unsupported
from attnsuite.impls.registry import REGISTRY

ROUNDS = 10
LENGTHS = [256, 512, 1024, 2048]


def _implementations():
    params = []
    for entry in REGISTRY:
        available, reason = framework_status(entry.framework)
        wrong_env = [f"{k}={v}" for k, v in entry.env if os.environ.get(k) != v]
        if not available:
            marks = pytest.mark.skip(reason=reason)
        elif wrong_env:
            marks = pytest.mark.skip(reason=f"needs {' '.join(wrong_env)} (Keras picks one backend per process)")
        else:
            marks = ()
        params.append(pytest.param(entry.name, marks=marks, id=entry.name))
    return params


IMPLS = _implementations()
PASS_IDS = {"forward": "fwd", "forward_backward": "fwd+bwd"}


def _run(benchmark, request, impl: str, pass_: str, L: int, d_model: int, heads: int):
    config = Config(batch=1, L_q=L, L_k=L, d_model=d_model, heads=heads, kv_heads=heads,
                    dtype="float32", causal=False, device=request.config.getoption("--bench-device"))
    try:
        case = build(impl, config)
        compile = NATURAL_COMPILE[case.entry.framework]
        call, block = case.prepare(pass_, compile)
        first = timing.first_call(call, block)  # compilation stays out of the rounds
    except Unsupported as exc:
        pytest.skip(f"{impl}: {exc}")
    loops = timing.calibrate(call, block, min_block_time=5e-3)
    work = flops.attention_flops(case.spec, config.batch, config.L_q, config.L_k, pass_)
    params, source = case.count_params()
    benchmark.group = f"{pass_} L={L} E={d_model} H={heads}"
    benchmark.extra_info.update(impl=impl, framework=case.entry.framework, compile=compile, **{"pass": pass_},
                                **config.to_dict(), flops=work, flops_formula=flops.FORMULA_VERSION,
                                first_call_s=first, params=params, params_source=source)

    benchmark.pedantic(lambda: block(call()), rounds=ROUNDS, iterations=loops, warmup_rounds=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        benchmark.extra_info.update(compile_s=max(first - median, 0.0), gflops_per_s=work / median / 1e9)


@pytest.mark.parametrize("pass_", list(PASS_IDS), ids=list(PASS_IDS.values()))
@pytest.mark.parametrize("impl", IMPLS)
def test_attention(benchmark, request, impl, pass_):
    _run(benchmark, request, impl, pass_, L=128, d_model=256, heads=4)


@pytest.mark.slow
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("pass_", list(PASS_IDS), ids=list(PASS_IDS.values()))
@pytest.mark.parametrize("impl", IMPLS)
def test_attention_lengths(benchmark, request, impl, pass_, L):
    _run(benchmark, request, impl, pass_, L=L, d_model=512, heads=8)
