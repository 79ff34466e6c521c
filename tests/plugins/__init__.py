"""Plug-in implementations used by the suite's own tests (see numpy_impls.py)."""
