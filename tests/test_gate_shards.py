"""Sharding (conformance/shards.py) and merging (conformance/merge.py): ``attnsuite check
--shard K/N`` judges a deterministic, balanced part of the cases; ``attnsuite report``
puts the shards back together with the unsharded run's verdicts, counts and results."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from attnsuite import cli as suite_cli
from attnsuite.conformance import cli, merge
from attnsuite.conformance.cases import catalog
from attnsuite.conformance.shards import estimated_cost, parse_shard, shard_positions
from conftest import require

IMPLS = ["numpy.oracle", "torch.fused", "broken.torch.scale_one_over_d_k"]


@pytest.mark.parametrize("profile", ["quick", "default"])
@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_shards_partition_the_cases_and_balance_their_cost(profile, count):
    cases = catalog(profile)
    shards = [shard_positions(cases, k, count) for k in range(1, count + 1)]
    assert sorted(p for shard in shards for p in shard) == list(range(len(cases)))
    assert all(shard == sorted(shard) for shard in shards)
    loads = [sum(estimated_cost(cases[p]) for p in shard) for shard in shards]
    # Dealt largest first to the lightest: no shard exceeds another by more than one case.
    assert max(loads) - min(loads) <= max(estimated_cost(c) for c in cases)


def test_shards_are_the_same_in_every_process():
    script = ("from attnsuite.conformance.cases import catalog\n"
              "from attnsuite.conformance.shards import shard_positions\n"
              "print([shard_positions(catalog('default'), k, 4) for k in (1, 2, 3, 4)])")
    seen = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        seen.add(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                check=True).stdout)
    seen.add(str([shard_positions(catalog("default"), k, 4) for k in (1, 2, 3, 4)]) + "\n")
    assert len(seen) == 1


@pytest.mark.parametrize("text", ["0/3", "4/3", "3", "a/b", "1/0", "-1/2", ""])
def test_a_malformed_shard_is_a_usage_error(text, capsys):
    with pytest.raises(Exception):
        parse_shard(text)
    assert cli.main(["numpy.oracle", "--shard", text]) == 2
    assert "--shard" in capsys.readouterr().err


def test_more_shards_than_cases_is_a_usage_error(capsys):
    assert cli.main(["numpy.oracle", "--case", "mha2-E8-B2-Lq5-Lk5-*float64", "--shard", "1/3"]) == 2
    assert "only 2 cases" in capsys.readouterr().err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three shards and the unsharded run of the same implementations (one fails)."""
    require("torch")
    folder = tmp_path_factory.mktemp("shards")
    codes = {}
    for name, extra in [("full", []), *[(f"shard{k}", ["--shard", f"{k}/3"]) for k in (1, 2, 3)]]:
        codes[name] = cli.main([*IMPLS, "--profile", "quick", "--report", str(folder / name), "-q", *extra])
    return folder, codes


def _report(folder) -> dict:
    return json.loads((folder / "conformance.json").read_text())


def _results(report) -> dict:
    data = json.loads(report.read_text())
    return {"ok": data["ok"], "cases": [c["id"] for c in data["cases"]], "warnings": data["warnings"],
            "implementations": [(i["name"], i["verdict"], i["counts"], i["coverage"],
                                 [(r["case_id"], r["check"], r["status"], r["ratio"]) for r in i["results"]])
                                for i in data["implementations"]]}


def test_three_shards_merged_equal_the_unsharded_run(runs, capsys):
    folder, codes = runs
    assert codes["full"] == 1
    shard_cases = [_report(folder / f"shard{k}")["cases"] for k in (1, 2, 3)]
    assert all(shard_cases) and sum(map(len, shard_cases)) == len(catalog("quick"))
    out, junit = folder / "merged", folder / "merged.xml"
    code = suite_cli.main(["report", *(str(folder / f"shard{k}") for k in (3, 1, 2)),
                           "--out", str(out), "--junit-xml", str(junit)])
    printed = capsys.readouterr().out
    assert code == codes["full"]
    merged, full = _results(out / "conformance.json"), _results(folder / "full" / "conformance.json")
    assert merged == full
    assert [v for _, v, *_ in merged["implementations"]] == ["pass", "pass", "fail"]
    assert f"FAIL: 2 of 3 implementations pass ({len(catalog('quick'))} cases, merged from 3 reports)" in printed
    # Each shard's machine is kept, and the JUnit file has every check.
    environment = json.loads((out / "conformance.json").read_text())["environment"]
    assert [e["shard"] for e in environment["inputs"]] == ["3/3", "1/3", "2/3"]
    assert all(e["python"] and e["frameworks"] for e in environment["inputs"])
    assert (out / "conformance.md").read_text().count("- merged from ") == 3
    tests = sum(len(i[4]) for i in full["implementations"])
    assert f'tests="{tests}"' in junit.read_text()


def test_a_missing_or_repeated_shard_is_refused(runs, capsys):
    folder, _ = runs
    assert suite_cli.main(["report", str(folder / "shard1"), str(folder / "shard3"),
                           "--out", str(folder / "x")]) == 2
    assert "shard 2/3 of the run" in capsys.readouterr().err
    assert suite_cli.main(["report", *(str(folder / f"shard{k}") for k in (1, 2, 2, 3)),
                           "--out", str(folder / "x")]) == 2
    assert "both shard 2/3" in capsys.readouterr().err
    assert not (folder / "x" / "conformance.json").exists()
    before = (folder / "shard1" / "conformance.json").read_text()
    assert suite_cli.main(["report", *(str(folder / f"shard{k}") for k in (1, 2, 3)),
                           "--out", str(folder / "shard1")]) == 2
    assert "is an input" in capsys.readouterr().err
    assert (folder / "shard1" / "conformance.json").read_text() == before


@pytest.mark.parametrize("device, labels", [("gpu", ["cpu", "gpu"]), ("cpu", ["run 1", "run 2"])])
def test_another_machines_run_is_added_beside_with_its_rows_labelled(runs, tmp_path, capsys, device, labels):
    folder, _ = runs
    # Another machine's run (here: the oracle alone, unsharded), merged with the shards;
    # as a GPU job's report (the device its environment names: no GPU here) or a CPU one's.
    assert cli.main(["numpy.oracle", "--report", str(tmp_path / "other"), "-q"]) == 0
    other = tmp_path / "other" / "conformance.json"
    data = json.loads(other.read_text())
    data["environment"]["device"] = device
    other.write_text(json.dumps(data))
    code = suite_cli.main(["report", *(str(folder / f"shard{k}") for k in (1, 2, 3)), str(tmp_path / "other"),
                           "--out", str(tmp_path / "merged"), "-q"])
    capsys.readouterr()
    assert code == 1
    data = json.loads((tmp_path / "merged" / "conformance.json").read_text())
    names = [i["name"] for i in data["implementations"]]
    assert names == [f"numpy.oracle [{labels[0]}]", "torch.fused", "broken.torch.scale_one_over_d_k",
                     f"numpy.oracle [{labels[1]}]"]
    assert [e["device"] for e in data["environment"]["inputs"]] == ["cpu", "cpu", "cpu", device]


def test_report_hands_benchmark_folders_to_the_benchmark_merge(tmp_path, monkeypatch):
    from attnsuite.bench import cli as bench_cli

    seen = []
    monkeypatch.setattr(bench_cli, "report_main", lambda argv: seen.append(argv) or 0)
    argv = [str(tmp_path), "--out", str(tmp_path / "out")]
    assert suite_cli.main(["report", *argv]) == 0
    assert seen == [argv]


def test_a_file_that_is_no_conformance_report_is_named(tmp_path, capsys):
    (tmp_path / "conformance.json").write_text("{\"implementations\": 3}")
    assert merge.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert f"{tmp_path / 'conformance.json'}: not a conformance report" in capsys.readouterr().err


def test_merged_warnings_are_the_unsharded_runs(tmp_path, capsys):
    """An xfail pattern that matches in one shard only is no warning of the run; one that
    matches nothing anywhere is, once."""
    xfails = tmp_path / "xfails.txt"
    xfails.write_text("numpy.oracle::mha2-E8-B2-Lq5-Lk5-float64::output  # matches one case\n"
                      "numpy.oracle::no-such-case::*  # matches nothing\n")
    common = ["numpy.oracle", "--xfails", str(xfails), "-q"]
    assert cli.main([*common, "--report", str(tmp_path / "full")]) == 0
    for k in (1, 2, 3):
        assert cli.main([*common, "--shard", f"{k}/3", "--report", str(tmp_path / f"s{k}")]) == 0
    assert merge.main([*(str(tmp_path / f"s{k}") for k in (1, 2, 3)), "--out", str(tmp_path / "merged")]) == 0
    capsys.readouterr()
    shard_warnings = [_report(tmp_path / f"s{k}")["warnings"] for k in (1, 2, 3)]
    # The two shards without that case warn about its pattern; the merge does not.
    assert sum(any("Lk5-float64::output" in w for w in warnings) for warnings in shard_warnings) == 2
    merged, full = tmp_path / "merged" / "conformance.json", tmp_path / "full" / "conformance.json"
    assert _results(merged) == _results(full)
    assert len(_results(tmp_path / "full" / "conformance.json")["warnings"]) == 1
