"""The libraries behind the ecosystem's layers are optional: a missing one is a reason."""

from __future__ import annotations

import importlib
from types import ModuleType

from attnsuite.impls.errors import Unsupported

EXTRA = "ecosystem"  # pip install 'attnsuite[ecosystem]' installs every one of them


def library(module: str, layer: str) -> ModuleType:
    """Import ``module`` for ``layer``, or raise ``Unsupported`` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Unsupported(f"{layer}: {module} is not available ({exc}): "
                          f"pip install 'attnsuite[{EXTRA}]'") from exc
