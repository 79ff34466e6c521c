"""The gate under attack (issue 12, items 5 to 9): each test makes the attack, then asserts
that the gate held.

5. output paths validated before any work, one run at a time per report folder;
6. hostile messages made safe for the terminal, JUnit XML, Markdown and HTML, kept whole;
7. NaN gradients fail, wherever they are;
8. bad inputs (weights, zip bombs, numeric options, xfails files, names) are usage errors
   naming what is wrong, and ``bench`` resolves plug-ins as ``check`` does;
9. the calling contract: arguments changed in place, a non-tensor or wrong-dtype output.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest

from attnsuite import sanitize
from attnsuite.bench import cli as bench_cli
from attnsuite.bench import store
from attnsuite.conformance import runner
from attnsuite.conformance.cli import main
from attnsuite.conformance.runner import check
from attnsuite.conformance.weights import load_weights, save_weights
from attnsuite.conformance.xfails import Xfails
from attnsuite.impls import init_weights
from attnsuite.impls.spec import AttentionSpec
from conftest import require

H = "numpy:tests.plugins.hostile:"
REPO = Path(__file__).resolve().parent.parent
ONE_CASE = ["--case", "mha2-E8-B2-Lq5-Lk5-float32"]
CONTRACT_CASE = "mha2-E8-B2-Lq4-Lk5-mask_random-bias_random-contract-float32"


@pytest.fixture
def nothing_runs(monkeypatch):
    """Fails the test if the gate starts judging anything."""
    def refuse(*args, **kwargs):
        pytest.fail("the gate ran implementations despite a usage error")
    monkeypatch.setattr(runner, "judge_isolated", refuse)
    monkeypatch.setattr(runner, "judge_in_process", refuse)


# ---------------------------------------------------------------------------------------
# 5. Output paths, checked before any work; one run per report folder.

def test_a_report_folder_that_is_a_file_is_a_usage_error(tmp_path, capsys, nothing_runs):
    existing = tmp_path / "a-file"
    existing.write_text("mine")
    assert main(["numpy.oracle", "--report", str(existing)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert existing.read_text() == "mine"
    assert main(["numpy.oracle", "--report", str(existing / "below")]) == 2
    assert "--report" in capsys.readouterr().err


def test_a_junit_file_that_is_a_folder_is_a_usage_error(tmp_path, capsys, nothing_runs):
    assert main(["numpy.oracle", "--junit-xml", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--report", "--junit-xml"])
def test_an_unwritable_place_is_a_usage_error(option, capsys, nothing_runs):
    # /proc takes no new files, for root too (the suite's CI runs as root).
    assert main(["numpy.oracle", option, "/proc/attnsuite-no-such/out"]) == 2
    err = capsys.readouterr().err
    assert option in err and "/proc" in err


def test_a_second_run_into_a_busy_report_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "report"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from attnsuite.conformance.report import ReportLock
            ReportLock({str(folder)!r}).acquire()
            print("held", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["numpy.oracle", "-q", *ONE_CASE, "--report", str(folder)]) == 2
        assert "another run is writing" in capsys.readouterr().err
        assert not (folder / "conformance.json").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # The holder gone, the folder is free again, and no lock file is left behind.
    assert main(["numpy.oracle", "-q", *ONE_CASE, "--report", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == [
        "conformance.html", "conformance.json", "conformance.md"]


# ---------------------------------------------------------------------------------------
# 6. Hostile messages.

@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    argv = [H + "hostile_message", *ONE_CASE, "--report", str(folder / "report"),
            "--junit-xml", str(folder / "junit.xml")]
    return folder, argv


def _outside_code_blocks(markdown: str) -> list[str]:
    """The lines CommonMark reads as Markdown: a block closes only on a backtick-only line
    at least as long as its opening fence."""
    outside, fence = [], None
    for line in markdown.split("\n"):
        run = re.fullmatch(r"(`{3,})\s*", line)
        if fence is None and run:
            fence = run.group(1)
        elif fence is not None and run and len(run.group(1)) >= len(fence):
            fence = None
        elif fence is None:
            outside.append(line)
    assert fence is None, "a code block is left open"
    return outside


def test_hostile_messages_are_safe_and_whole_in_every_report(hostile_run, capsys):
    folder, argv = hostile_run
    assert main(argv) == 1
    terminal = capsys.readouterr().out
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", terminal), "control characters reached the terminal"
    assert "boom" in terminal and "the real reason sits on line 2" in terminal

    root = ET.parse(folder / "junit.xml").getroot()        # well-formed despite NUL and ESC
    error = next(root.iter("error"))
    assert "the real reason sits on line 2" in error.text and "<script>" in error.text
    assert "\x1b" not in error.text and "\x1b" not in error.get("message")
    assert "Traceback (most recent call last)" in error.text

    markdown = (folder / "report" / "conformance.md").read_text()
    outside = _outside_code_blocks(markdown)
    assert not [line for line in outside if "PASS" in line], "a fake verdict escaped its block"
    assert not [line for line in outside if "<script" in line], "live HTML escaped its block"
    assert "the real reason sits on line 2" in markdown and "\x1b" not in markdown

    html = (folder / "report" / "conformance.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html and "\x1b" not in html
    assert "the real reason sits on line 2" in html

    data = json.loads((folder / "report" / "conformance.json").read_text())
    [result] = [r for r in data["implementations"][0]["results"] if r["check"] == "output"]
    assert "the real reason sits on line 2" in result["message"]
    assert "Traceback" in result["detail"]["traceback"]


def test_traceback_prints_the_whole_message_and_where_it_was_raised(hostile_run, capsys):
    _, argv = hostile_run
    assert main([H + "hostile_message", *ONE_CASE, "-q"]) == 1
    short = capsys.readouterr().out
    assert "Traceback" not in short
    assert main([H + "hostile_message", *ONE_CASE, "-q", "--traceback"]) == 1
    full = capsys.readouterr().out
    assert "Traceback (most recent call last)" in full and "hostile.py" in full
    assert "\x1b" not in full and "\x00" not in full


def test_each_medium_has_its_sanitiser():
    text = "a\x1b[31mb\x00c\n```\nd <e> | f"
    assert sanitize.terminal(text) == "abc\n```\nd <e> | f"
    ET.fromstring(f"<x a='{sanitize.xml('q')}'>{sanitize.html(sanitize.xml(text))}</x>")
    block = sanitize.markdown_block("````` inside")
    assert block[0] == block[-1] == "``````" and len(block) == 3
    assert sanitize.html("<b>") == "&lt;b&gt;"
    assert "\n" not in sanitize.markdown_inline("a\nb") and "\\|" in sanitize.markdown_inline("|")


# ---------------------------------------------------------------------------------------
# 7. NaN gradients fail wherever they are, fully masked rows or not.

@pytest.mark.parametrize("name", ["nan_gradients_everywhere", "nan_gradient_in_a_row_that_sees_keys"])
def test_nan_gradients_fail_with_a_right_output(name):
    impl = check([H + name], profile="quick", dtypes=["float32"]).implementations[0]
    failing = impl.failures()
    assert impl.verdict == "fail" and failing
    assert all(r.check.startswith("grad.") and "non-finite" in r.message for r in failing)
    # Also where no row is fully masked, and the output passes everywhere.
    assert [r for r in failing if "fully_masked" not in r.tags]
    assert all(r.status == "pass" for r in impl.results if r.check == "output")


# ---------------------------------------------------------------------------------------
# 8. Bad inputs.

SPEC = AttentionSpec(8, 2)


def _npz(path, spec_fields, weights):
    np.savez(path, **weights, spec=json.dumps(spec_fields))
    return path


@pytest.mark.parametrize("fields, field", [
    ({"num_heads": 0}, "num_heads"), ({"num_heads": -2}, "num_heads"),
    ({"num_heads": True}, "num_heads"), ({"num_heads": 2, "head_dim": 0}, "head_dim"),
    ({"num_heads": 2, "num_kv_heads": 3}, "num_kv_heads"), ({"num_heads": "2"}, "num_heads"),
])
def test_a_bad_weights_spec_names_the_file_and_the_field(tmp_path, capsys, fields, field, nothing_runs):
    path = _npz(tmp_path / "w.npz", fields, init_weights(SPEC))
    assert main(["numpy.oracle", "--weights", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and field in err and "Traceback" not in err


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(tmp_path, bad):
    weights = init_weights(SPEC)
    weights["wv"][1, 2] = bad
    path = _npz(tmp_path / "w.npz", {"num_heads": 2}, weights)
    with pytest.raises(ValueError, match=r"w\.npz: weights\['wv'\]: 1 of .* NaN or Inf"):
        load_weights(path)
    path = tmp_path / "w.safetensors"
    save_weights(path, SPEC, weights)         # it checks names and shapes, not values
    with pytest.raises(ValueError, match=r"w\.safetensors: weights\['wv'\]"):
        load_weights(path)


def test_weights_of_other_shapes_are_refused_before_loading(tmp_path):
    weights = {**init_weights(SPEC), "wq": np.zeros((8, 8, 1))}
    with pytest.raises(ValueError, match=r"wq.*2-D"):
        load_weights(_npz(tmp_path / "w.npz", {"num_heads": 2}, weights))
    weights = {**init_weights(SPEC), "wo": np.zeros((8, 3))}
    with pytest.raises(ValueError, match=r"wo"):
        load_weights(_npz(tmp_path / "w.npz", {"num_heads": 2, "out_dim": 8}, weights))


def _zip_bomb(path: Path, uncompressed: int) -> Path:
    """An .npz whose wq member inflates to ``uncompressed`` bytes of zeros."""
    side = int((uncompressed // 8) ** 0.5)
    header = np.lib.format
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, w in init_weights(SPEC).items():
            if name != "wq":
                archive.writestr(f"{name}.npy", _npy_bytes(w))
        archive.writestr("spec.npy", _npy_bytes(np.array(json.dumps({"num_heads": 2}))))
        with archive.open("wq.npy", "w", force_zip64=True) as member:
            head = io.BytesIO()
            header.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False,
                                                 "shape": (side, side)})
            member.write(head.getvalue())
            chunk = bytes(2**24)
            left = side * side * 8
            while left:
                member.write(chunk[:min(left, len(chunk))])
                left -= min(left, len(chunk))
    return path


def _npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.slow
def test_a_zip_bomb_is_refused_without_inflating_it(tmp_path):
    path = _zip_bomb(tmp_path / "bomb.npz", 2 * 2**30)
    assert path.stat().st_size < 4 * 2**20, path.stat().st_size
    probe = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import resource, sys
        from attnsuite.conformance.weights import load_weights
        try:
            load_weights({str(path)!r})
        except ValueError as exc:
            print(exc)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)], capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": ""})
    message, peak_kib = probe.stdout.strip().splitlines()
    assert "zip bomb" in message and "bomb.npz" in message, probe.stdout + probe.stderr
    assert int(peak_kib) < 400 * 2**10, f"peak memory {int(peak_kib) // 1024} MiB"


def test_a_small_zip_bomb_is_caught_the_same_way(tmp_path, monkeypatch):
    """The same attack at a size the default test run affords, with the cap scaled down."""
    from attnsuite.conformance import weights as weights_module
    monkeypatch.setattr(weights_module, "ARCHIVE_FREE_BYTES", 2**20)
    path = _zip_bomb(tmp_path / "bomb.npz", 64 * 2**20)
    with pytest.raises(ValueError, match="zip bomb"):
        load_weights(path)


@pytest.mark.parametrize("argv, text", [
    (["--jobs", "0"], "--jobs"), (["--jobs", "-5"], "--jobs"), (["--jobs", "x"], "invalid int"),
    (["--dtype", ""], "empty dtype"), (["--dtype", "float32,"], "empty dtype"),
    (["--seed", "-1"], "--seed"), (["--seed", str(2**32)], "--seed"),
])
def test_numeric_options_are_validated(argv, text, capsys, nothing_runs):
    assert main(["numpy.oracle", *argv]) == 2
    assert text in capsys.readouterr().err


@pytest.mark.parametrize("argv, text", [
    (["numpy.oracle", "--threads", "0"], "--threads"),
    (["numpy.oracle", "--threads", "-5"], "--threads"),
    (["numpy.oracle", "--dtype", ""], "--dtype"),
    (["no.such.impl"], "no implementation of that name"),
    (["numpy:only_two"], "FRAMEWORK:module.path:factory"),
])
def test_bench_usage_errors_exit_2_and_store_nothing(argv, text, tmp_path, capsys):
    out = tmp_path / "bench"
    assert bench_cli.main([*argv, "--out", str(out)]) == 2
    assert text in capsys.readouterr().err
    assert not out.exists()


def test_bench_finds_a_plugin_in_the_current_directory_as_check_does(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_attention_module.py").write_text(
        "from attnsuite.impls.oracle import factory\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO))   # the suite itself, not the plug-in's folder
    name = "numpy:my_attention_module:factory"
    assert main([name, "-q", *ONE_CASE]) == 0
    out = tmp_path / "bench"
    assert bench_cli.main([name, "--sweep", "quick", "--threads", "1", "--out", str(out)]) == 0
    records = store.load(out)
    assert records and {r["status"] for r in records if r["impl"] == name} == {"ok"}


def test_xfails_errors_name_the_file_and_the_line(tmp_path):
    path = tmp_path / "xfails.txt"
    path.write_bytes(b"numpy.oracle::*::output  # fine\n\xff\xfe not text\n")
    with pytest.raises(ValueError, match=r"xfails\.txt:2: not UTF-8"):
        Xfails.load(path)
    path.write_bytes(b"numpy.oracle::*::output  # fine\n\nok\x00::x\n")
    with pytest.raises(ValueError, match=r"xfails\.txt:3: a NUL"):
        Xfails.load(path)
    path.write_text("a b  # two patterns\n")
    with pytest.raises(ValueError, match=r"xfails\.txt:1"):
        Xfails.load(path)


# ---------------------------------------------------------------------------------------
# 9. The calling contract.

@pytest.mark.parametrize("name, text", [
    ("mutates_mask", "in place: mask"),
    ("mutates_bias_and_params", "in place: bias, params['wq']"),
    ("mutates_query", "in place: query"),
    ("returns_float64", "returned dtype float64 for inputs of dtype float32"),
    ("returns_list", "returned a builtins.list"),
    ("returns_none", "returned None"),
])
def test_contract_breaches_fail_the_contract_check(name, text):
    impl = check([H + name], profile="quick", case_filter=CONTRACT_CASE).implementations[0]
    [result] = impl.results
    assert (result.check, result.status) == ("contract", "fail"), result.message
    assert text in result.message


def test_the_contract_holds_for_the_oracle_in_every_dtype_it_runs():
    impl = check(["numpy.oracle"], profile="default",
                 case_filter=lambda c: c.checks == ("contract",)).implementations[0]
    assert {r.status for r in impl.results} == {"pass", "unsupported"}
    assert {r.case_id.rsplit("-", 1)[1] for r in impl.results if r.status == "pass"} == {
        "float32", "float64"}


@pytest.mark.parametrize("name, text", [("torch_returns_list", "a builtins.list"),
                                        ("torch_returns_none", "None")])
def test_a_non_tensor_output_is_named_not_an_attribute_error(name, text):
    require("torch")
    impl = check([f"torch:tests.plugins.hostile:{name}"], profile="quick", dtypes=["float32"],
                 case_filter=["mha2-E8-B2-Lq5-Lk5-float32", CONTRACT_CASE]).implementations[0]
    assert impl.verdict == "fail"
    for r in impl.results:
        assert r.status == "fail" and "AttributeError" not in r.message, r.message
        assert f"returned {text}" in r.message and "not a tensor of its framework" in r.message


def test_an_implementation_without_gradients_is_still_judged_on_its_output():
    impl = check([H + "forward_only"], profile="quick", dtypes=["float32"]).implementations[0]
    assert impl.verdict == "pass", [r.message for r in impl.failures()]
    statuses = {(r.check.split(".")[0], r.status) for r in impl.results}
    assert ("output", "pass") in statuses and ("grad", "unsupported") in statuses
    assert ("contract", "pass") in statuses
