"""The shared steps (impls/ops): each framework's causal/window rule is the oracle's, and
the built-in adapters and kernels take nothing from our implementations (impls/ours)."""

from __future__ import annotations

import ast
import importlib
import itertools
import pathlib

import numpy as np
import pytest

from conftest import require
from attnsuite.impls import AttentionSpec, oracle, ops

IMPLS = pathlib.Path(__file__).resolve().parents[1] / "impls"

CAUSAL = (None, "top_left", "bottom_right")
WINDOWS = (None, (0, 0), (1, 0), (0, 2), (2, 1), (3, 3), (7, 0))
LENGTHS = (1, 2, 3, 5, 8)
SPECS = [AttentionSpec(4, 1, causal=c, window=w) for c, w in itertools.product(CAUSAL, WINDOWS)]

# What each framework's ``structural_visibility`` takes after (spec, L_q, L_k).
EXTRA_ARGS = {"torch": ("cpu",), "tensorflow": (), "jax": ()}


def _imported_modules(path: pathlib.Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved against its package."""
    package = ".".join(("attnsuite",) + path.relative_to(IMPLS.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("folder", ["builtin", "kernels", "ops"])
def test_imports_nothing_from_ours(folder):
    files = sorted((IMPLS / folder).glob("*.py"))
    assert files, f"no modules in impls/{folder}"
    for path in files:
        ours = sorted(name for name in _imported_modules(path)
                      if name.split(".")[:3] in (["attnsuite", "impls", "ours"], ["impls", "ours"]))
        assert not ours, f"impls/{folder}/{path.name} imports {ours} from impls.ours"


def test_the_import_check_sees_an_import_of_ours(tmp_path):
    # The check above must be able to fail: an absolute and a relative import of ours.
    folder = IMPLS / "builtin"
    for source in ("from attnsuite.impls.ours.torch import project\n", "from ..ours import jax\n"):
        path = folder / "_probe_for_test_ops.py"
        try:
            path.write_text(source)
            with pytest.raises(AssertionError, match="imports .* from impls.ours"):
                test_imports_nothing_from_ours("builtin")
        finally:
            path.unlink()


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_the_rule_on_numpy_indices_is_the_oracles(spec):
    for L_q, L_k in itertools.product(LENGTHS, LENGTHS):
        got = ops.structural_rule(spec, np.arange, L_q, L_k)
        expected = oracle.structural_mask(spec, L_q, L_k)
        if got is None:
            assert expected.all(), f"{spec} L_q={L_q} L_k={L_k}: no rule, but the oracle hides keys"
        else:
            np.testing.assert_array_equal(got, expected, err_msg=f"{spec} L_q={L_q} L_k={L_k}")


@pytest.mark.parametrize("framework", list(EXTRA_ARGS))
def test_each_frameworks_rule_is_the_oracles(framework):
    backend = require(framework)
    module = importlib.import_module(f"attnsuite.impls.ops.{framework}")
    for spec, L_q, L_k in itertools.product(SPECS, LENGTHS, LENGTHS):
        got = module.structural_visibility(spec, L_q, L_k, *EXTRA_ARGS[framework])
        expected = oracle.structural_mask(spec, L_q, L_k)
        where = f"{framework} {spec} L_q={L_q} L_k={L_k}"
        if spec.causal is None and spec.window is None:
            assert got is None, f"{where}: a mask where the spec has no rule"
            assert expected.all(), f"{where}: the oracle hides keys without a rule"
        else:
            np.testing.assert_array_equal(backend.to_numpy(got), expected, err_msg=where)
