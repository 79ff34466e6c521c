"""attnsuite: one attention spec, checked against a float64 oracle and timed across
TensorFlow, PyTorch and JAX.

Its parts are ``attnsuite.impls`` (the spec, the oracle, the implementations and their
adapters), ``attnsuite.conformance`` (the gate) and ``attnsuite.bench`` (the benchmark
harness). In the repository they are the top-level folders ``impls/``, ``conformance/``
and ``bench/``; installed, they sit inside this package (``pyproject.toml`` maps them), so
a user's own ``impls`` or ``bench`` package never collides with them.
"""

from pathlib import Path as _Path

_CHECKOUT = _Path(__file__).resolve().parent.parent
if (_CHECKOUT / "impls" / "oracle.py").is_file() and (_CHECKOUT / "pyproject.toml").is_file():
    # Run from a source checkout (with PYTHONPATH at its root, or an editable install):
    # the three folders beside this one are its subpackages.
    __path__.append(str(_CHECKOUT))

__all__ = ["AttentionSpec", "PluginError", "Unsupported", "call_forms", "call_inputs", "visible_mask"]


def __getattr__(name: str):
    # Imported on first use: ``import attnsuite`` stays cheap (NumPy and ml_dtypes take
    # seconds), which the pytest plugin needs, loaded in every pytest session of a user.
    if name in __all__:
        from attnsuite import impls
        return getattr(impls, name)
    raise AttributeError(f"module 'attnsuite' has no attribute {name!r}")
