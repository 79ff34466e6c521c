"""Implementations of the attention spec, the oracle they are held to, and the adapters
that run any of them from NumPy inputs."""

from impls.errors import PluginError, Unsupported
from impls.spec import AttentionSpec
from impls.weights import init_weights, param_count, weight_shapes

__all__ = ["AttentionSpec", "PluginError", "Unsupported", "init_weights", "param_count",
           "weight_shapes"]
