"""The GPU study's parts that run anywhere: its sweeps, the core-only FLOP count, cores
built and timed through the harness, the compiled-memory count, and the report's three
analyses on records made up to show each verdict."""

from __future__ import annotations

import math

import pytest

from attnsuite.bench import flops, gpu_report
from attnsuite.bench.case import build
from attnsuite.bench.records import new_record
from attnsuite.bench.runner import plan
from attnsuite.bench.sweeps import GPU_SWEEPS, Config, Point, sweep
from attnsuite.impls.backends import framework_status
from attnsuite.impls.spec import AttentionSpec

TINY = Config(batch=1, L_q=16, L_k=16, d_model=32, heads=4, kv_heads=4, dtype="float32",
              causal=False, device="cpu")


def _require(framework):
    available, reason = framework_status(framework)
    if not available:
        pytest.skip(reason)


# --- sweeps and FLOPs ----------------------------------------------------------------------

@pytest.mark.parametrize("name", GPU_SWEEPS)
def test_gpu_sweeps_refuse_the_cpu(name):
    with pytest.raises(ValueError, match="--device gpu"):
        sweep(name, "cpu")


def test_asking_the_cli_for_a_gpu_sweep_on_the_cpu_is_a_usage_error(capsys):
    from attnsuite.bench import cli

    assert cli.main(["torch.fused", "--sweep", "gpu-core", "--device", "cpu"]) == 2
    assert "--device gpu" in capsys.readouterr().err


def test_gpu_core_sweep_covers_the_shapes_the_study_asks_for():
    configs, _ = sweep("gpu-core", "gpu")
    head_sizes = {c.d_model // c.heads for c in configs}
    assert head_sizes == {64, 128}
    assert {c.L_q for c in configs} == {1024, 2048, 4096, 8192, 16384}
    assert {c.causal for c in configs} == {False, True}
    assert {(c.dtype, c.device, c.self_attention) for c in configs} == {("bfloat16", "gpu", True)}


def test_gpu_memory_sweep_reaches_32k_and_asks_for_the_compiled_memory():
    configs, budget = sweep("gpu-memory", "gpu")
    assert max(c.L_q for c in configs) == 32768 and budget.compiled_memory
    assert not sweep("gpu-core", "gpu")[1].compiled_memory


@pytest.mark.parametrize("causal", [None, "top_left"])
@pytest.mark.parametrize("pass_", flops.PASSES)
def test_a_core_is_credited_with_the_attention_matmuls_only(causal, pass_):
    spec = AttentionSpec(d_model=64, num_heads=4, causal=causal)
    B, L = 2, 32
    core = flops.attention_flops(spec, B, L, L, pass_, core=True)
    qk_pv = 2 * B * spec.H * L * L * (spec.d_k + spec.d_v) // (2 if causal else 1)
    assert core == qk_pv * (1 if pass_ == "forward" else 3)
    # The layer adds four E×E projections of every token.
    projections = 4 * 2 * B * L * spec.E * spec.E * (1 if pass_ == "forward" else 3)
    assert flops.attention_flops(spec, B, L, L, pass_) == core + projections


def test_plan_lets_the_implementations_of_a_process_take_turns_at_each_shape():
    configs = [Config(**{**TINY.to_dict(), "L_q": L, "L_k": L}) for L in (16, 32)]
    groups, unresolved = plan(["core.torch.fused", "core.torch.sdpa"], configs, ["natural"])
    assert not unresolved
    [(_, points)] = groups
    assert [(p.impl, p.config.L_q) for p in points] == [
        ("core.torch.fused", 16), ("core.torch.sdpa", 16), ("core.torch.fused", 32), ("core.torch.sdpa", 32)]


# --- cores through the harness ----------------------------------------------------------------

def _leaves(result) -> list:
    if isinstance(result, (tuple, list)):
        return [leaf for item in result for leaf in _leaves(item)]
    if isinstance(result, dict):
        return _leaves(list(result.values()))
    return [] if result is None else [result]


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_a_core_case_has_heads_and_no_weights(framework):
    _require(framework)
    case = build(f"core.{framework}.fused", TINY)
    assert case.params == {} and case.count_params() == (0, "params")
    q, k, v = (case.inputs[n] for n in ("query", "key", "value"))
    assert k is not q and v is not q, "a core's key and value are projections of their own"
    for pass_ in flops.PASSES:
        call, block = case.prepare(pass_, "eager")
        result = block(call())
        if pass_ == "forward_backward":
            assert len(_leaves(result)) == 3, "gradients of q, k and v, and of nothing else"


def test_jax_reports_the_compiled_programs_memory():
    _require("jax")
    from attnsuite.bench.frameworks import jax as jax_timing

    case = build("core.jax.fused", TINY)
    jitted, _ = case.prepare("forward", "jit")
    temp, method = jax_timing.compiled_memory(jitted)
    assert temp is not None and temp >= 0 and "memory analysis" in method
    eager, _ = case.prepare("forward", "eager")
    assert jax_timing.compiled_memory(eager)[0] is None


# --- the report's analyses ------------------------------------------------------------------

def _record(impl, L, *, tflops=None, memory=None, status="ok", framework="torch", pass_="forward",
            kind="kernel", head_size=128, causal=False):
    config = Config(4, L, L, 2048, 2048 // head_size, 2048 // head_size, "bfloat16", causal, "gpu")
    measured = {}
    if status == "ok":
        measured = {"median_s": 1e-3, "flops_per_s": (tflops or 1) * 1e12, "pct_peak": 50.0,
                    "peak_memory_delta_bytes": memory, "memory_method": "torch.cuda.max_memory_allocated",
                    "peak_flops_per_s": 8e14}
    return new_record(Point(impl, config, "eager"), pass_, status, run_id="r", env={"machine": "h100"},
                      framework=framework, kind=kind, reason=None if status == "ok" else "out of memory",
                      **measured)


def test_kernel_ratio_is_against_the_fastest_other_kernel_of_the_same_framework():
    records = [_record("core.torch.fused", 4096, tflops=600), _record("core.torch.sdpa.flash", 4096, tflops=350),
               _record("core.torch.sdpa.cudnn", 4096, tflops=680),
               # Another framework's faster kernel is no yardstick for ours.
               _record("core.jax.dpa.cudnn", 4096, tflops=900, framework="jax"),
               _record("core.jax.fused", 4096, tflops=640, framework="jax"),
               _record("core.jax.dpa.xla", 4096, tflops=116, framework="jax")]
    table = gpu_report.kernel_ratios(gpu_report.report.frame(records)).set_index("framework")
    torch_row, jax_row = table.loc["torch"], table.loc["jax"]
    assert torch_row["fastest other"] == "core.torch.sdpa.cudnn"
    assert torch_row["ratio"] == pytest.approx(600 / 680) and not torch_row["meets"]
    assert jax_row["fastest other"] == "core.jax.dpa.cudnn" and not jax_row["meets"]
    records[0] = _record("core.torch.fused", 4096, tflops=650)  # 0.956 of 680
    table = gpu_report.kernel_ratios(gpu_report.report.frame(records)).set_index("framework")
    assert table.loc["torch", "meets"]


@pytest.mark.parametrize("ours_ms, spread, expected", [
    (1.00, 0.01, "meets"),       # as fast as the fastest: throughput ratio ~1
    (1.20, 0.01, "misses"),      # 0.83 of its throughput, clearly
    (1.05, 0.30, "uncertain"),   # 0.95 within noise of 30%
])
def test_kernel_ratio_carries_the_significance_of_the_samples(ours_ms, spread, expected):
    """The GPU study uses bench compare's machinery: the interval of the throughput ratio."""
    import numpy as np

    def with_samples(record, median_ms, seed):
        samples = list(1e-3 * median_ms * (1 + spread * np.random.default_rng(seed).uniform(-1, 1, 30)))
        record.update(samples_s=samples, median_s=float(np.median(samples)))
        record["flops_per_s"] = 1e12 / record["median_s"]
        return record

    records = [with_samples(_record("core.torch.fused", 4096), ours_ms, 1),
               with_samples(_record("core.torch.sdpa.cudnn", 4096), 1.0, 2)]
    [row] = gpu_report.kernel_ratios(gpu_report.report.frame(records)).to_dict("records")
    low, high = (float(v) for v in row["95% CI"].split("-"))
    assert low <= row["ratio"] <= high and row["significance"] == expected, row


@pytest.mark.parametrize("power, expected", [(1, "linear"), (2, "quadratic"), (1.5, "between")])
def test_memory_growth_names_how_memory_scales(power, expected):
    lengths = [4096, 8192, 16384, 32768]
    records = [_record("core.torch.fused", L, memory=2**20 * (L / 1024) ** power) for L in lengths]
    [row] = gpu_report.memory_growth(gpu_report.report.frame(records)).to_dict("records")
    assert row["exponent"] == pytest.approx(power) and row["growth"] == expected
    assert row["largest L"] == 32768


def test_memory_growth_prefers_the_compiled_count_and_shows_where_a_series_failed():
    records = [_record("core.jax.dpa.xla", L, memory=10 * 2**20, framework="jax") for L in (4096, 8192)]
    for r, L in zip(records, (4096, 8192)):
        r.update(compiled_temp_bytes=2**20 * (L / 1024) ** 2, compiled_memory_method="XLA memory analysis")
    records.append(_record("core.jax.dpa.xla", 16384, status="oom", framework="jax"))
    [row] = gpu_report.memory_growth(gpu_report.report.frame(records)).to_dict("records")
    assert row["growth"] == "quadratic" and row["failed at"] == "16384 (oom)"
    assert row["measured as"] == "XLA memory analysis"


def test_growth_exponent_needs_two_sizes():
    assert math.isnan(gpu_report.growth_exponent([4096], [1.0]))
    assert gpu_report.verdict(math.nan) == "too few sizes"


def test_the_report_is_written_whole_even_with_sections_unmeasured(tmp_path):
    records = [_record("core.torch.fused", L, tflops=600, memory=L * 2**10) for L in (4096, 8192)]
    records += [_record("core.torch.sdpa.cudnn", L, tflops=640, memory=L * 2**10) for L in (4096, 8192)]
    files = gpu_report.write(records, tmp_path)
    assert {f.name for f in files} == set(gpu_report.FILES)
    text = (tmp_path / "gpu.md").read_text()
    assert "Met at 0 of 2 shapes" in text
    assert "## Layers, projections included\n\n(none)" in text
    with pytest.raises(ValueError, match="no records"):
        gpu_report.write([], tmp_path)
