"""``--weights``: a file of trained canonical weights and its spec, read back exactly,
sizes inferred from the shapes, and the cases run on those weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attnsuite.conformance.cli import main
from attnsuite.conformance.runner import check
from attnsuite.conformance.weights import load_weights, save_weights
from attnsuite.impls import init_weights
from attnsuite.impls.spec import AttentionSpec

P = "numpy:tests.plugins.numpy_impls:"
SPEC = AttentionSpec(12, 4, num_kv_heads=2, kdim=6, value_head_dim=2, out_dim=5, causal="top_left")


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_round_trip(tmp_path, suffix):
    weights = init_weights(SPEC, seed=7)
    path = tmp_path / f"w{suffix}"
    save_weights(path, SPEC, weights)
    spec, loaded = load_weights(path)
    assert spec == SPEC
    assert list(loaded) == list(weights)
    for name in weights:
        np.testing.assert_array_equal(loaded[name], weights[name], err_msg=name)


def test_sizes_are_inferred_from_the_shapes(tmp_path):
    weights = init_weights(SPEC, seed=1)
    path = tmp_path / "w.npz"
    np.savez(path, **weights, spec=json.dumps({"num_heads": 4, "causal": "top_left"}))
    spec, _ = load_weights(path)
    assert spec == SPEC, spec
    no_bias = AttentionSpec(8, 2, bias=False)
    np.savez(path, **init_weights(no_bias), spec=json.dumps({"num_heads": 2}))
    assert load_weights(path)[0] == no_bias


def test_bad_files_say_what_is_wrong(tmp_path):
    path = tmp_path / "w.npz"
    with pytest.raises(ValueError, match="no such file"):
        load_weights(path)
    np.savez(path, **init_weights(SPEC))
    with pytest.raises(ValueError, match="no 'spec' entry"):
        load_weights(path)
    np.savez(path, **init_weights(SPEC), spec=json.dumps({"causal": "top_left"}))
    with pytest.raises(ValueError, match="num_heads"):
        load_weights(path)
    np.savez(path, **init_weights(SPEC), spec=json.dumps({"num_heads": 4, "out_dim": 7}))
    with pytest.raises(ValueError, match="wo"):
        load_weights(path)


def test_cases_run_on_the_file_weights(tmp_path, monkeypatch):
    trained, other = tmp_path / "trained.npz", tmp_path / "other.npz"
    save_weights(trained, SPEC, {n: w * 1.5 for n, w in init_weights(SPEC, seed=3).items()})
    save_weights(other, SPEC, init_weights(SPEC, seed=4))
    # This implementation ignores the params it is handed and uses the weights of the file
    # named by ATTNSUITE_TEST_WEIGHTS: it passes exactly when the suite feeds it those.
    monkeypatch.setenv("ATTNSUITE_TEST_WEIGHTS", str(trained))
    run = check([P + "frozen_weights", "numpy.oracle"], profile="quick", dtypes=["float64"],
                weights_path=trained)
    frozen, reference = run.implementations
    assert reference.verdict == "pass" and frozen.verdict == "pass", \
        [r.message for r in frozen.failures()]
    assert {c.spec for c in run.cases if c.checks != ("dropout",)} == {SPEC}
    assert run.environment["weights"]["spec"] == SPEC.to_dict()
    assert len(run.environment["weights"]["sha256"]) == 64
    monkeypatch.setenv("ATTNSUITE_TEST_WEIGHTS", str(other))
    run = check([P + "frozen_weights"], profile="quick", dtypes=["float64"], weights_path=trained)
    failures = run.implementations[0].failures()
    assert failures and {r.check for r in failures} >= {"output"}
    assert all(f"--weights {trained}" in r.message for r in failures)


def test_cli_weights_and_repro_line(tmp_path, capsys):
    path = tmp_path / "trained.npz"
    save_weights(path, SPEC, init_weights(SPEC, seed=5))
    assert main(["numpy.oracle", "--weights", str(path), "--dtype", "float64", "-q"]) == 0
    assert main(["numpy.oracle", "--weights", str(tmp_path / "missing.npz")]) == 2
    assert "no such file" in capsys.readouterr().err
