"""The pytest face: ``pytest conformance --impl IMPL`` runs one test per implementation
x case, failing with the gate's own message, and pytest's --junit-xml works as usual."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from attnsuite.conformance.cases import catalog

ROOT = Path(__file__).resolve().parent.parent
P = "numpy:tests.plugins.numpy_impls:"


def test_one_test_per_implementation_and_case(tmp_path):
    junit = tmp_path / "junit.xml"
    command = [sys.executable, "-m", "pytest", "conformance", "-q",
               "--impl", "numpy.oracle", "--impl", P + "naive", "--dtype", "float32",
               "--dtype", "float64", f"--junit-xml={junit}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    cases = catalog("quick", dtypes=["float32", "float64"])
    testcases = ET.parse(junit).getroot().findall(".//testcase")
    per_case = [t for t in testcases if "test_case[" in t.get("name")]
    assert len(per_case) == 2 * len(cases)
    failed = {t.get("name") for t in per_case if t.find("failure") is not None}
    # Only the naive softmax fails, and only on the large logits.
    assert failed and all(P + "naive::" in n and "stress_large_logits" in n for n in failed), failed
    assert "reproduce: attnsuite check " + P + "naive --case" in done.stdout
