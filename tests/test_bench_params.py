"""The harness's parameter count: the variables of the layer an implementation holds,
checked against the spec's formula (SPEC 2: 1,050,624 for E=512, H=8 with bias)."""

from __future__ import annotations

import os

import pytest

from attnsuite.bench.case import build
from attnsuite.bench.sweeps import Config, Point
from attnsuite.bench.worker import Worker
from conftest import require
from attnsuite.impls.errors import Unsupported
from attnsuite.impls.entry import Entry
from attnsuite.impls.registry import REGISTRY
from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import init_weights, param_count

SPEC_COUNT = 1_050_624
CONFIG = Config(batch=1, L_q=4, L_k=4, d_model=512, heads=8, kv_heads=8, dtype="float32",
                causal=False, device="cpu")


def test_the_formula_gives_the_spec_number():
    assert param_count(CONFIG.spec()) == SPEC_COUNT


@pytest.mark.parametrize("name", [e.name for e in REGISTRY])
def test_every_implementation_counts_the_spec_number(name):
    entry = next(e for e in REGISTRY if e.name == name)
    require(entry.framework)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    wrong = [f"{k}={v}" for k, v in entry.env if os.environ.get(k) != v]
    if wrong:
        pytest.skip(f"{name} needs {' '.join(wrong)}: Keras picks one backend per process")
    try:
        case = build(name, CONFIG)
        call, block = case.prepare("forward", "eager")
        block(call())  # layers may create their weights on the first call
    except Unsupported as exc:
        pytest.skip(f"{name}: {exc}")
    count, source = case.count_params()
    assert count == SPEC_COUNT, f"{name}: {count:,} parameters counted from its {source}, spec says {SPEC_COUNT:,}"


def test_a_layer_with_other_weights_is_counted_as_it_is_and_flagged():
    """A torch implementation holding an unbiased layer: its own count, flagged as a mismatch."""
    require("torch")
    import torch

    def unbiased(spec):
        layer = torch.nn.MultiheadAttention(spec.E, spec.H, bias=False, batch_first=True)

        def fn(params, query, key, value, mask=None, bias=None):
            return layer(query, key, value, need_weights=False)[0]
        return fn

    messages = []
    job = {"framework": "torch", "points": [], "run_id": "test", "env": {"machine": "test"},
           "budget": {"max_time": 0.01, "min_runs": 2, "point_timeout": 60}}
    worker = Worker(job, messages.append)
    worker.load_framework()
    worker.factories["unbiased"] = (Entry("unbiased", "torch", "tests:unbiased", "test", "plugin"), unbiased)
    worker.measure_point(Point("unbiased", CONFIG, "eager"))

    records = [m["record"] for m in messages]
    assert [r["pass"] for r in records] == ["forward", "forward_backward"]
    for r in records:
        assert r["status"] == "ok", f"{r['pass']}: {r['reason']}"
        assert (r["params"], r["params_source"]) == (4 * 512 * 512, "layer"), r["pass"]
        assert r["params_expected"] == SPEC_COUNT and r["params_mismatch"] is True, r["pass"]


def test_functional_implementations_count_the_params_they_are_handed():
    config = Config(**{**CONFIG.to_dict(), "d_model": 256})
    case = build("numpy.oracle", config)
    case.params = init_weights(AttentionSpec(d_model=256, num_heads=8, bias=False))  # no biases
    assert case.count_params() == (4 * 256 * 256, "params")
