"""The house rules: the installed layout, no import circle, no large tracked file."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"attnsuite": "attnsuite", "attnsuite.impls": "impls",
           "attnsuite.conformance": "conformance", "attnsuite.bench": "bench"}


def _packages_on_disk() -> set[str]:
    found = set()
    for package, folder in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *relative)))
    return found


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def test_pyproject_lists_every_package_and_maps_the_folders():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(setuptools["packages"]) == _packages_on_disk()
    assert setuptools["package-dir"] == FOLDERS


def _module_level_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The suite's modules that ``path`` imports when it is imported (not inside functions)."""
    imported = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                     else node.module for alias in node.names]
        else:
            continue
        imported.update(name for name in names if name in modules)
    return imported


def test_no_import_circle():
    modules = _modules()
    graph = {name: _module_level_imports(path, modules) for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                cycle = trail[trail.index(other):] + [other] if other in trail else [name, other]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if other not in state:
                visit(other, trail + [other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_tracked_file_over_one_megabyte():
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True,
                           check=True).stdout.decode().split("\0")
    large = [f for f in files if f and (ROOT / f).is_file() and (ROOT / f).stat().st_size > 2**20]
    assert not large, f"tracked files over 1 MB (generated data belongs out of git): {large}"


def test_the_wheel_holds_only_the_attnsuite_namespace(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True)
    (wheel,) = tmp_path.glob("attnsuite-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"attnsuite"}
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("attnsuite/impls/oracle.py", "attnsuite/conformance/worker.py",
                   "attnsuite/bench/worker.py", "attnsuite/impls/ours/torch.py"):
        assert module in names, module
