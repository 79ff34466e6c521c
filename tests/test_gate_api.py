"""``attnsuite.conformance.runner.check``: verdicts, statuses and tags on NumPy implementations,
the failure modes of plug-ins, the same answers in one process or in workers, and the
workers' environment (the GPU hidden from a CPU run, JAX's capped compile cache)."""

from __future__ import annotations

import pytest

from attnsuite.conformance import pool
from attnsuite.conformance.checks import Options
from attnsuite.conformance.runner import check
from conftest import require
from attnsuite.impls.registry import find_entry

P = "numpy:tests.plugins.numpy_impls:"
F32 = ["float32"]


def _by_name(result):
    return {impl.name: impl for impl in result.implementations}


def test_oracle_passes_quick_with_every_check_family():
    result = check(["numpy.oracle"], profile="quick")
    impl = result.implementations[0]
    assert result.ok and result.exit_code == 0
    assert (impl.name, impl.verdict, impl.reason) == ("numpy.oracle", "pass", None)
    checks = {r.check for r in impl.results}
    assert {"output", "grad.query", "grad.key", "grad.value", "grad.wq", "grad.bk", "grad.bo",
            "fully_masked", "stateless", "deterministic", "dropout"} <= checks
    statuses = {r.status for r in impl.results}
    assert statuses <= {"pass", "unsupported"}
    # NumPy runs no half types, and the oracle takes no training keyword: unsupported, not failed.
    assert all(r.status == "unsupported" for r in impl.results
               if "float16" in r.tags or "bfloat16" in r.tags or r.check == "dropout")
    assert all(isinstance(r.tags, tuple) and r.tags for r in impl.results)


def test_failure_modes_are_reported_and_every_other_implementation_judged():
    names = ["numpy:tests.plugins.broken_import:factory", P + "raises", P + "factory_raises",
             P + "wrong_shape", P + "returns_nan", "numpy.oracle", P + "correct"]
    result = check(names, profile="quick", dtypes=F32)
    impls = _by_name(result)
    assert [i.name for i in result.implementations] == names
    assert not result.ok and result.exit_code == 1

    broken = impls[names[0]]
    assert broken.verdict == "error" and "attnsuite_no_such_dependency" in broken.reason
    assert broken.results == []
    for name, status, text in [(P + "raises", "error", "RuntimeError: boom"),
                               (P + "factory_raises", "error", "factory"),
                               (P + "wrong_shape", "fail", "shape"),
                               (P + "returns_nan", "fail", "non-finite")]:
        impl = impls[name]
        output = [r for r in impl.results if r.check == "output"]
        assert impl.verdict == "fail" and impl.reason is None, name
        assert output and all(r.status == status and text in r.message for r in output), name
    for name in ("numpy.oracle", P + "correct"):
        assert impls[name].verdict == "pass", [r.message for r in impls[name].failures()]


def test_failure_message_names_case_worst_element_bound_and_repro():
    result = check([P + "wrong_key_grad"], profile="quick", dtypes=F32)
    failures = result.implementations[0].failures()
    # Self-attention's one input gets the sum of the three gradients, the key's included.
    # The key gradient shows in grad.key, in grad.query where one tensor is all three
    # (self form), and in grad.memory where one is key and value (kv form).
    assert failures and {r.check for r in failures} == {"grad.key", "grad.query", "grad.memory"}
    assert all("self_attention" in r.tags for r in failures if r.check == "grad.query")
    assert all("form_kv" in r.tags for r in failures if r.check == "grad.memory")
    message = failures[0].message
    case_id = failures[0].case_id
    for piece in (f"{P}wrong_key_grad :: {case_id} :: grad.key: FAIL", "AttentionSpec(", "seed=",
                  "mask=", "worst element [", "got", "expected", "bound",
                  f"reproduce: attnsuite check {P}wrong_key_grad --case {case_id}"):
        assert piece in message, f"{piece!r} not in\n{message}"


def test_unsupported_is_not_failure():
    result = check([P + "unsupported_gqa"], profile="quick", dtypes=F32)
    impl = result.implementations[0]
    assert impl.verdict == "pass"
    grouped = [r for r in impl.results if "gqa" in r.tags or "mqa" in r.tags]
    assert grouped and all(r.status == "unsupported" and "no grouped-query" in r.message
                           for r in grouped)
    assert all(r.status == "pass" for r in impl.results if r not in grouped and r.check != "dropout")


def test_nothing_judged_is_no_pass():
    """Every selected case declined: "untested", and the run fails, naming why."""
    result = check([P + "unsupported_gqa"], profile="quick", dtypes=F32, case_filter="gqa*")
    impl = result.implementations[0]
    assert impl.results and {r.status for r in impl.results} == {"unsupported"}
    assert impl.verdict == "untested" and "no grouped-query" in impl.reason
    assert result.exit_code == 1


def test_case_filter_by_id_pattern_and_predicate():
    one = "mha2-E8-B2-Lq5-Lk7-mask_head-float32"     # a default-profile case, run from quick
    result = check(["numpy.oracle"], profile="quick", case_filter=one)
    assert {r.case_id for r in result.implementations[0].results} == {one}
    result = check(["numpy.oracle"], profile="quick", case_filter="*stress*")
    assert {c.id for c in result.cases} and all("stress" in c.id for c in result.cases)
    result = check(["numpy.oracle"], profile="quick", case_filter=lambda c: "gqa" in c.tags)
    assert result.cases and all("gqa" in c.tags for c in result.cases)
    with pytest.raises(ValueError, match="not in the catalog"):
        check(["numpy.oracle"], case_filter="no-such-case")


def test_isolated_workers_give_the_same_results():
    names = [P + "wrong_key_grad", "numpy.oracle", "numpy:tests.plugins.broken_import:factory"]
    here = check(names, profile="quick", dtypes=F32)
    isolated = check(names, profile="quick", dtypes=F32, isolate=True)
    for a, b in zip(here.implementations, isolated.implementations):
        assert (a.name, a.verdict, a.reason) == (b.name, b.verdict, b.reason)
        assert [(r.case_id, r.check, r.status, r.message, r.tags) for r in a.results] == \
               [(r.case_id, r.check, r.status, r.message, r.tags) for r in b.results], a.name


def test_xfails_turn_failures_into_xfail_and_passes_into_xpass():
    lines = [
        f"{P}wrong_key_grad::*::grad.key   # known: the key gradient is off by 1%",
        f"{P}wrong_key_grad::*-self-*::grad.query  # self-attention sums the key gradient in",
        f"{P}wrong_key_grad::*-kv-*::grad.memory  # so does key-is-value",
        f"{P}wrong_key_grad::*::output     # wrongly expected to fail",
        "# a comment line", "",
        "torch.nothing::*                  # not in this run: no warning",
        f"{P}wrong_key_grad::no-such-case    # in this run, matches nothing: warned",
    ]
    result = check([P + "wrong_key_grad"], profile="quick", dtypes=F32, xfails=lines)
    impl = result.implementations[0]
    assert impl.verdict == "pass", [r.message for r in impl.failures()]
    xfail = [r for r in impl.results if r.status == "xfail"]
    xpass = [r for r in impl.results if r.status == "xpass"]
    assert xfail and {r.check for r in xfail} == {"grad.key", "grad.query", "grad.memory"}
    assert all("self_attention" in r.tags for r in xfail if r.check == "grad.query")
    assert all("known: the key gradient is off by 1%" in r.message for r in xfail
               if r.check == "grad.key")
    assert xpass and {r.check for r in xpass} == {"output"} and "XPASS" in xpass[0].message
    assert len(result.warnings) == 1 and "no-such-case" in result.warnings[0]


def test_xfails_file_and_its_errors(tmp_path):
    path = tmp_path / "xfails.txt"
    path.write_text(f"{P}returns_nan::*::output  # NaN everywhere\n")
    impl = check([P + "returns_nan"], profile="quick", dtypes=F32, xfails=path).implementations[0]
    assert {r.status for r in impl.results if r.check == "output"} == {"xfail"}
    with pytest.raises(ValueError, match="no-such-file"):
        check(["numpy.oracle"], xfails=tmp_path / "no-such-file")
    path.write_text("two patterns on one line  # reason\n")
    with pytest.raises(ValueError, match="xfails.txt:1"):
        check(["numpy.oracle"], xfails=path)


def test_a_crashing_worker_is_an_error_with_its_exit_code():
    result = check([P + "exits_process"], profile="quick", dtypes=F32, isolate=True)
    impl = result.implementations[0]
    assert impl.verdict == "error" and "exit code 3" in impl.reason, impl.reason
    assert result.exit_code == 1


# ---------------------------------------------------------------------------------------
# The workers' environment (no worker started).

JAX_CACHE_VARS = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                  "JAX_COMPILATION_CACHE_MAX_SIZE")


@pytest.fixture
def plain_env(monkeypatch, tmp_path):
    """No cache or GPU settings of the user's, and a cache home of the test's own."""
    for name in (*JAX_CACHE_VARS, "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(pool, "_can_cap_jax_cache", lambda: True)
    return monkeypatch


@pytest.mark.parametrize("name", ["numpy.oracle", "torch.fused", "tensorflow.fused", "jax.fused"])
def test_a_cpu_run_hides_the_gpu_and_a_gpu_run_does_not(plain_env, name):
    entry = find_entry(name)
    assert pool._worker_env(entry, "cpu")["CUDA_VISIBLE_DEVICES"] == "", name
    assert "CUDA_VISIBLE_DEVICES" not in pool._worker_env(entry, "gpu"), name
    plain_env.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert pool._worker_env(entry, "gpu")["CUDA_VISIBLE_DEVICES"] == "1", name
    assert pool._worker_env(entry, "cpu")["CUDA_VISIBLE_DEVICES"] == "", name


def test_jax_workers_on_a_gpu_share_it_rather_than_preallocate_it(plain_env):
    plain_env.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    assert pool._worker_env(find_entry("jax.fused"), "gpu")["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in pool._worker_env(find_entry("torch.fused"), "gpu")


def test_jax_workers_get_a_capped_persistent_cache(plain_env, tmp_path):
    for name in ("jax.fused", "flax.nnx.MultiHeadAttention", "keras.jax.MultiHeadAttention"):
        env = pool._worker_env(find_entry(name), "cpu")
        assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "attnsuite" / "jax-capped"), name
        assert int(env["JAX_COMPILATION_CACHE_MAX_SIZE"]) == 256 * 2**20, name
    for name in ("numpy.oracle", "torch.fused", "tensorflow.fused"):
        env = pool._worker_env(find_entry(name), "cpu")
        assert not set(JAX_CACHE_VARS) & set(env), f"{name} got JAX cache settings"


def test_jax_reads_the_cache_settings_from_these_variables():
    """JAX derives each flag's environment variable from its name, upper-cased."""
    require("jax")
    import jax

    unknown = [v for v in JAX_CACHE_VARS if v.lower() not in jax.config.values]
    assert not unknown, f"jax {jax.__version__} has no flag for {unknown}"


def test_the_users_own_jax_cache_settings_win(plain_env):
    entry = find_entry("jax.fused")
    plain_env.setenv("JAX_COMPILATION_CACHE_MAX_SIZE", "1000")
    assert pool._worker_env(entry, "cpu")["JAX_COMPILATION_CACHE_MAX_SIZE"] == "1000"
    plain_env.delenv("JAX_COMPILATION_CACHE_MAX_SIZE")
    plain_env.setenv("JAX_COMPILATION_CACHE_DIR", "/elsewhere")
    env = pool._worker_env(entry, "cpu")
    assert env["JAX_COMPILATION_CACHE_DIR"] == "/elsewhere"
    assert "JAX_COMPILATION_CACHE_MAX_SIZE" not in env, "the user's own cache was capped"


def test_jax_cpu_workers_compile_quickly_unless_the_user_set_xla_flags(plain_env):
    plain_env.delenv("XLA_FLAGS", raising=False)
    quick = pool._worker_env(find_entry("flax.nnx.MultiHeadAttention"), "cpu")["XLA_FLAGS"]
    assert "--xla_backend_optimization_level=0" in quick.split()
    assert pool.worker_settings(["jax"], "cpu") == {
        "jax": {"XLA_FLAGS": {"value": quick, "set_by": "attnsuite check"}}}
    for name in ("numpy.oracle", "torch.fused", "tensorflow.fused"):
        assert "XLA_FLAGS" not in pool._worker_env(find_entry(name), "cpu"), name
    assert "XLA_FLAGS" not in pool._worker_env(find_entry("jax.fused"), "gpu")
    plain_env.setenv("XLA_FLAGS", "")          # even empty: the user's own settings
    assert pool._worker_env(find_entry("jax.fused"), "cpu")["XLA_FLAGS"] == ""
    assert pool.worker_settings(["jax"], "cpu")["jax"]["XLA_FLAGS"] == {"value": "", "set_by": "the user"}


def test_torch_cpu_workers_run_one_thread_unless_the_user_set_it(plain_env):
    plain_env.delenv("OMP_NUM_THREADS", raising=False)
    for name in ("torch.fused", "keras.torch.MultiHeadAttention", "transformers.LlamaAttention.sdpa"):
        assert pool._worker_env(find_entry(name), "cpu")["OMP_NUM_THREADS"] == "1", name
    for name in ("numpy.oracle", "jax.fused", "tensorflow.fused"):
        assert "OMP_NUM_THREADS" not in pool._worker_env(find_entry(name), "cpu"), name
    assert "OMP_NUM_THREADS" not in pool._worker_env(find_entry("torch.fused"), "gpu")
    assert set(pool.worker_settings(["torch", "numpy", "torch"], "cpu")) == {"torch"}
    plain_env.setenv("OMP_NUM_THREADS", "4")
    assert pool._worker_env(find_entry("torch.fused"), "cpu")["OMP_NUM_THREADS"] == "4"
    assert pool.worker_settings(["torch"], "cpu")["torch"]["OMP_NUM_THREADS"]["set_by"] == "the user"


def test_xla_accepts_the_quick_compile_options():
    """A flag XLA no longer knows fails every JAX worker at its first compile."""
    require("jax")
    import jax

    from attnsuite.impls.backends.common import QUICK_XLA_CPU_OPTIONS

    assert int(jax.jit(lambda x: x + 1, compiler_options=QUICK_XLA_CPU_OPTIONS)(1)) == 2


def test_no_persistent_cache_where_jax_cannot_cap_it(plain_env):
    """Without ``filelock`` JAX raises on a capped cache: better none than an unbounded one."""
    plain_env.setattr(pool, "_can_cap_jax_cache", lambda: False)
    env = pool._worker_env(find_entry("jax.fused"), "cpu")
    assert not set(JAX_CACHE_VARS) & set(env), env


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_isolated_workers_start_with_the_runs_device(monkeypatch, device):
    seen = []

    def fake_part(part, names, cases, job_base, env, timeout, events, workers):
        seen.append(env.get("CUDA_VISIBLE_DEVICES"))

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(pool, "_judge_part", fake_part)
    list(pool.judge_isolated(["numpy.oracle", "torch.fused"], [], Options(device=device), jobs=1))
    expected = "" if device == "cpu" else None
    assert seen == [expected] * 2, f"device {device}: the workers got CUDA_VISIBLE_DEVICES {seen}"


def test_a_frameworks_keras_entry_shares_its_worker_with_the_backend_setting(monkeypatch):
    started = []

    def judge_part(part, names, cases, job_base, env, *rest):
        started.append((env.get("KERAS_BACKEND"), sorted(names[i] for i in part.indices)))
    monkeypatch.setattr(pool, "_judge_part", judge_part)
    names = ["torch.fused", "keras.torch.MultiHeadAttention", "jax.fused",
             "keras.jax.MultiHeadAttention", "numpy.oracle"]
    list(pool.judge_isolated(names, [], Options(), jobs=1))
    assert sorted(started, key=str) == sorted([
        ("torch", ["keras.torch.MultiHeadAttention", "torch.fused"]),
        ("jax", ["jax.fused", "keras.jax.MultiHeadAttention"]),
        (None, ["numpy.oracle"])], key=str)
