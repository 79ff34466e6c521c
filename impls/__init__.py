"""Implementations of the attention spec, the oracle they are held to, and the adapters
that run any of them from NumPy inputs."""

from attnsuite.impls.calling import call_forms, call_inputs
from attnsuite.impls.errors import PluginError, Unsupported
from attnsuite.impls.masks import visible_mask
from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import init_weights, param_count, weight_shapes

__all__ = ["AttentionSpec", "PluginError", "Unsupported", "call_forms", "call_inputs",
           "init_weights", "param_count", "visible_mask", "weight_shapes"]
