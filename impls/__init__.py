"""Implementations of the attention spec, the oracle they are held to, and the adapters
that run any of them from NumPy inputs."""

import importlib

# name -> the submodule defining it, imported on first use: importing a submodule such as
# ``attnsuite.impls.listing`` runs this file, and NumPy with ml_dtypes takes seconds,
# which ``attnsuite list`` answering from its cache must not pay.
_HOMES = {"AttentionSpec": "spec", "PluginError": "errors", "Unsupported": "errors",
          "call_forms": "calling", "call_inputs": "calling",
          "init_weights": "weights", "param_count": "weights", "visible_mask": "masks",
          "weight_shapes": "weights"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
