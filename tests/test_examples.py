"""examples/user_project, as a user runs it: the suite installed from a wheel (not the
checkout), the project copied outside the checkout, and its attention layer judged by the
pytest plugin (loaded by its entry point alone) and by ``attnsuite check``: the same
outcome for every check, the same verdicts and counts, the same exit status."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import require
from gate_faces import RECORDER_MODULE, expected_outcomes, gate_outcomes, recorder_env, verdicts

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "user_project"
LAYER = "torch:myattention.layer:make"
BROKEN = "broken.torch.scale_one_over_d_k"      # a FAIL in both runs, compared too


def _install_suite(tmp_path: Path) -> Path:
    """The checkout built as a wheel and installed into a folder of its own."""
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(ROOT)], check=True)
    (wheel,) = wheels.glob("attnsuite-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                    str(wheel)], check=True)
    return site


def test_the_user_project_gets_the_same_verdicts_from_pytest_and_the_cli(tmp_path):
    require("torch")
    site = _install_suite(tmp_path)
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    outcomes = tmp_path / "outcomes.json"
    env = recorder_env(tmp_path / "recorder", outcomes, pythonpath=str(site))

    def run(*command):
        return subprocess.run([sys.executable, *command], cwd=project, env=env, capture_output=True,
                              text=True, timeout=600)

    where = run("-c", "import attnsuite.conformance.pytest_plugin as p; print(p.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr

    tests = run("-m", "pytest", "-q", "-p", RECORDER_MODULE, "--attnsuite-impl", LAYER,
                "--attnsuite-impl", BROKEN, "--attnsuite-profile", "quick",
                "--attnsuite-report", "out/pytest")
    check = run("-m", "attnsuite", "check", LAYER, BROKEN, "--profile", "quick", "--report", "out/cli")
    assert check.returncode == tests.returncode == 1, tests.stdout[-3000:] + tests.stderr[-3000:]

    from_cli = project / "out" / "cli" / "conformance.json"
    got = gate_outcomes(outcomes)
    assert got == expected_outcomes(from_cli)
    assert verdicts(project / "out" / "pytest" / "conformance.json") == verdicts(from_cli)
    assert verdicts(from_cli)[LAYER][0] == "pass" and verdicts(from_cli)[BROKEN][0] == "fail"
    assert f"PASS  {LAYER}" in check.stdout
    # The project's own test ran beside the gate's.
    assert "FAIL: 1 of 2 implementations pass" in tests.stdout
    assert "tests/test_layer.py::test_output_shape" in outcomes.read_text()
