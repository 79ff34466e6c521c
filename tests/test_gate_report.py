"""Report files: written atomically (an interruption leaves the old file or none), strict
JSON even for NaN results, and the matrix cells."""

from __future__ import annotations

import json
import os

import pytest

from attnsuite.conformance import report
from attnsuite.conformance.runner import check

P = "numpy:tests.plugins.numpy_impls:"


@pytest.fixture(scope="module")
def run():
    return check(["numpy.oracle", P + "returns_nan", P + "unsupported_gqa"], profile="quick",
                 dtypes=["float32"])


class Interrupted(BaseException):
    """Stands in for a KeyboardInterrupt or a kill arriving mid-write."""


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch, run):
    def interrupted_replace(src, dst):
        raise Interrupted
    monkeypatch.setattr(os, "replace", interrupted_replace)
    with pytest.raises(Interrupted):
        report.write_reports(run, tmp_path)
    assert list(tmp_path.iterdir()) == []              # no report, no temporary file


def test_interrupted_rewrite_keeps_the_previous_report(tmp_path, monkeypatch, run):
    report.write_reports(run, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"conformance.json", "conformance.md", "conformance.html"}

    real_fsync = os.fsync
    def interrupted_fsync(fd):                         # the text is half on disk, then: stop
        real_fsync(fd)
        raise Interrupted
    monkeypatch.setattr(os, "fsync", interrupted_fsync)
    with pytest.raises(Interrupted):
        report.write_reports(check(["numpy.oracle"], case_filter="*self*"), tmp_path)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before


def test_json_is_strict_even_with_nan_results(run):
    text = json.dumps(report.to_json(run), allow_nan=False)     # raises on NaN/Infinity
    data = json.loads(text)
    nan_impl = data["implementations"][1]
    assert nan_impl["verdict"] == "fail"
    assert any(r["ratio"] == "inf" for r in nan_impl["results"])


def test_matrix_cells(run):
    header, rows = report.matrix(run)
    assert header[:4] == ["implementation", "verdict", "judged", "output"]
    cells = {row[0]: dict(zip(header, row)) for row in rows}
    assert cells["numpy.oracle"]["output"].startswith("pass (worst")
    assert cells[P + "returns_nan"]["output"].startswith("FAIL ")
    assert cells[P + "returns_nan"]["verdict"] == "FAIL"
    assert "unsupported" in cells[P + "unsupported_gqa"]["output"]
    assert cells["numpy.oracle"]["dropout"] == "unsupported"
    assert cells[P + "unsupported_gqa"]["judged"].endswith("%")
    assert int(cells[P + "unsupported_gqa"]["judged"][:-1]) < int(cells[P + "returns_nan"]["judged"][:-1])


def test_attribution_names_the_features_failures_share():
    naive = check([P + "naive"], profile="default", dtypes=["float32", "float64"]).implementations[0]
    assert report.attribution(naive)[0].startswith("stress_large_logits: ")
