"""Plug-in resolution (SPEC 5): names resolve to factories, and every way a name can be
wrong is one line of PluginError that says which way."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_inputs
from attnsuite.impls import oracle, registry
from attnsuite.impls.backends import FRAMEWORKS
from attnsuite.impls.backends import numpy as numpy_backend
from attnsuite.impls.errors import PluginError
from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import init_weights


def _plugin_error(name: str) -> str:
    with pytest.raises(PluginError) as info:
        registry.resolve(name)
    message = str(info.value)
    assert "\n" not in message, f"not one line: {message!r}"
    return message


def test_a_plugin_name_resolves_to_its_factory():
    entry, factory = registry.resolve("numpy:attnsuite.impls.oracle:factory")
    assert factory is oracle.factory
    assert (entry.framework, entry.target, entry.kind) == ("numpy", "attnsuite.impls.oracle:factory", "plugin")


def test_a_plugin_module_on_sys_path_resolves(tmp_path, monkeypatch):
    (tmp_path / "_registry_test_plugin.py").write_text(
        "def make(spec):\n    return 'fn for ' + str(spec.H)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _, factory = registry.resolve("numpy:_registry_test_plugin:make")
    assert factory(AttentionSpec(8, 2)) == "fn for 2"


@pytest.mark.parametrize("name", ["numpy:attnsuite.impls.oracle", "numpy:attnsuite.impls.oracle:factory:extra",
                                  "numpy::factory", ":attnsuite.impls.oracle:factory", "numpy:attnsuite.impls.oracle:"])
def test_a_malformed_plugin_name(name):
    assert "FRAMEWORK:module.path:factory" in _plugin_error(name)


def test_an_unknown_framework():
    message = _plugin_error("mxnet:attnsuite.impls.oracle:factory")
    assert "unknown framework 'mxnet'" in message and "torch" in message, message


def test_a_framework_that_is_not_installed(monkeypatch):
    monkeypatch.setattr(registry, "framework_status",
                        lambda framework: (False, f"{framework} is not installed (pip install it)"))
    message = _plugin_error("torch:attnsuite.impls.oracle:factory")
    assert "framework 'torch' is not available: torch is not installed" in message, message


def test_a_module_that_does_not_import(tmp_path, monkeypatch):
    (tmp_path / "_registry_test_broken_plugin.py").write_text(
        "import numpy\nraise RuntimeError('no GPU here, sorry')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    message = _plugin_error("numpy:_registry_test_broken_plugin:factory")
    assert ("'_registry_test_broken_plugin' does not import: RuntimeError: no GPU here, sorry"
            in message), message


def test_a_module_that_does_not_exist():
    message = _plugin_error("numpy:no_such_module_anywhere:factory")
    assert "does not import: ModuleNotFoundError" in message, message


def test_a_missing_attribute():
    message = _plugin_error("numpy:attnsuite.impls.oracle:no_such_factory")
    assert "'attnsuite.impls.oracle' has no attribute 'no_such_factory'" in message, message


def test_an_attribute_that_is_not_callable():
    message = _plugin_error("numpy:attnsuite.impls.oracle:_ROUNDING_DTYPES")
    assert "is a dict, not a callable factory" in message, message


def test_an_unknown_registered_name():
    message = _plugin_error("torch.fastest")
    assert "'torch.fastest': no implementation of that name" in message, message
    assert "numpy.oracle" in message, f"the known names are not listed: {message}"


def test_registry_entries_are_unique_and_name_known_frameworks():
    names = [entry.name for entry in registry.REGISTRY]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"duplicate names: {duplicates}"
    for entry in registry.REGISTRY:
        assert entry.framework in FRAMEWORKS, entry
        module, _, attr = entry.target.partition(":")
        assert module and attr, f"{entry.name}: target {entry.target!r} is not module.path:factory"


def test_every_registered_name_resolves_to_its_entry():
    for entry in registry.REGISTRY:
        assert registry.find_entry(entry.name) == entry


# ---------------------------------------------------------------------------------------
# numpy.oracle through the NumPy adapter is the oracle.

SPEC = AttentionSpec(6, 2, num_kv_heads=1, causal="top_left", softcap=3.0)


def _case(L_k):
    inputs = make_inputs(SPEC, L_q=4, L_k=L_k)
    mask = np.random.default_rng(2).random((4, L_k)) < 0.8
    return init_weights(SPEC), inputs, mask


def test_numpy_oracle_through_the_adapter_matches_the_oracle():
    entry, factory = registry.resolve("numpy.oracle")
    assert entry.kind == "oracle"
    weights, inputs, mask = _case(L_k=5)
    q, k, v, d_out = inputs["query"], inputs["key"], inputs["value"], inputs["d_out"]
    out, grads = numpy_backend.forward_and_vjp(factory(SPEC), weights, q, k, v, d_out, mask,
                                               dtype="float64")
    np.testing.assert_array_equal(out, oracle.forward(SPEC, weights, q, k, v, mask))
    expected = oracle.vjp(SPEC, weights, q, k, v, d_out, mask)
    assert set(grads) == set(expected)
    for name in expected:
        np.testing.assert_array_equal(grads[name], expected[name], err_msg=name)


def test_self_attention_gradient_is_the_sum_of_the_three_input_gradients():
    _, factory = registry.resolve("numpy.oracle")
    weights, inputs, mask = _case(L_k=4)
    x, d_out = inputs["query"], inputs["d_out"]
    out, grads = numpy_backend.forward_and_vjp(factory(SPEC), weights, x, None, None, d_out, mask,
                                               dtype="float64", form="self")
    np.testing.assert_array_equal(out, oracle.forward(SPEC, weights, x, x, x, mask))
    expected = oracle.vjp(SPEC, weights, x, x, x, d_out, mask)
    assert "key" not in grads and "value" not in grads
    np.testing.assert_allclose(grads["query"], expected["query"] + expected["key"] + expected["value"],
                               rtol=1e-15, atol=1e-15)
