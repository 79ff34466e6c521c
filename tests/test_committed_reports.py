"""The committed conformance report says which commit made it, from a clean tree, and
covers what that command produces today: every registered implementation."""

from __future__ import annotations

import re
import subprocess

import pytest

from attnsuite.conformance.make_report import PROFILE, REPORT_DIR
from attnsuite.impls.registry import REGISTRY
from attnsuite.processes import SUITE_ROOT

HEADER = re.compile(r"^- suite: attnsuite \S+ at commit (?P<commit>[0-9a-f]{40})(?P<dirty> \(uncommitted changes\))?$",
                    re.MULTILINE)


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(SUITE_ROOT), *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def markdown() -> str:
    return (REPORT_DIR / "conformance.md").read_text()


def test_made_from_a_clean_tree_at_a_commit_of_this_history(markdown):
    header = HEADER.search(markdown)
    assert header, "the report does not name the commit it was made from"
    assert not header["dirty"], "the report was made from a tree with uncommitted changes"
    commit = header["commit"]
    if _git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        shallow = _git("rev-parse", "--is-shallow-repository").stdout.strip() == "true"
        assert shallow, f"the report names commit {commit}, which this repository does not have"
        pytest.skip(f"a shallow clone lacks commit {commit}; a full clone checks it")
    assert _git("merge-base", "--is-ancestor", commit, "HEAD").returncode == 0, \
        f"commit {commit} is not in HEAD's history"


def test_covers_every_registered_implementation_with_the_default_profile(markdown):
    assert f"- profile {PROFILE}," in markdown
    rows = set(re.findall(r"^\| (\S+) \| (?:pass|FAIL|ERROR|UNTESTED) \|", markdown, re.MULTILINE))
    rows = {name.replace("\\", "") for name in rows}   # Markdown escapes the underscores
    assert rows == {entry.name for entry in REGISTRY}, (
        "regenerate with `python -m attnsuite.conformance.make_report`: the report's "
        f"implementations differ from the registry's by {rows ^ {e.name for e in REGISTRY}}")
