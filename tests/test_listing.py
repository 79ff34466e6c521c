"""``attnsuite list``: one probing process per framework, all at once; a default table
that fits 100 columns, ``--wide`` with the reasons for unsupported features; install
hints that survive the terminal library's markup."""

from __future__ import annotations

import json
import threading

import pytest

from attnsuite.impls import backends, listing
from attnsuite.impls.entry import Entry
from attnsuite.impls.registry import all_entries

GQA_ONLY = "numpy:tests.plugins.numpy_impls:unsupported_gqa"


def test_one_probing_process_per_framework_keras_backends_included():
    groups = listing.probe_groups(all_entries(False))
    frameworks = [members[0].framework for _, members in groups]
    assert sorted(frameworks) == sorted(set(frameworks))        # each framework once
    for env, members in groups:
        assert all(m.framework == members[0].framework for m in members)
        assert all(dict(m.env) in ({}, env) for m in members)   # each gets the env it asks for
    torch_env, torch_members = next(g for g in groups if g[1][0].framework == "torch")
    assert torch_env == {"KERAS_BACKEND": "torch"}
    assert {"torch.fused", "keras.torch.MultiHeadAttention"} <= {m.name for m in torch_members}


def test_entries_that_disagree_on_the_environment_get_a_process_each():
    entries = [Entry(f"e{i}", "numpy", "m:f", "", "plugin", env) for i, env in
               enumerate([(("X", "1"),), (("X", "2"),), ()])]
    groups = listing.probe_groups(entries)
    assert sorted((env, [m.name for m in members]) for env, members in
                  [(tuple(e.items()), m) for e, m in groups]) == \
        [((), ["e2"]), ((("X", "1"),), ["e0"]), ((("X", "2"),), ["e1"])]


def test_the_groups_are_probed_at_the_same_time(monkeypatch):
    entries = [Entry(f"e{i}", "numpy", "m:f", "", "plugin", (("X", str(i)),)) for i in range(3)]
    together = threading.Barrier(3, timeout=30)   # broken unless all three probe at once

    def probe_group(env, members, started):
        together.wait()
        return {m.name: {"status": "ok", "reason": None, "features": {}} for m in members}

    monkeypatch.setattr(listing, "_probe_group", probe_group)
    assert list(listing.collect(entries)) == ["e0", "e1", "e2"]


@pytest.fixture
def no_torch(monkeypatch):
    """torch as if it were not installed."""
    monkeypatch.setitem(backends._MODULES, "torch", "attnsuite_no_such_torch")


def _squashed(text: str) -> str:
    return "".join(ch for ch in text if not ch.isspace() and ch not in "│┃")


def test_the_default_table_fits_100_columns_with_a_correct_install_hint(no_torch, capsys):
    assert listing.main(["numpy.oracle", GQA_ONLY, "torch.fused"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(map(len, lines)) <= listing.NARROW_WIDTH
    header = next(line for line in lines if "name" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == ["name", "framework", "kind", "status"]
    assert "pipinstall'attnsuite[torch]'" in _squashed(out)      # not eaten as markup
    # 13 spec features, two RoPE styles and decoding; the NumPy plug-in declares no decoding.
    assert "yes, every feature (16)" in out and "yes, 13 of 16 features" in out
    assert "no grouped-query attention here" not in out          # that is --wide's


def test_the_install_hint_names_the_extra():
    available, reason = backends.framework_status("torch")
    assert available or reason.endswith("(pip install 'attnsuite[torch]')")
    for framework in backends.FRAMEWORKS:
        hint = backends._INSTALL[framework]
        assert hint.startswith("pip install ") and "-e" not in hint.split()
        assert framework == "numpy" or f"'attnsuite[{framework}]'" in hint


def test_wide_shows_every_column_and_why_a_feature_is_not_supported(no_torch, capsys):
    assert listing.main(["numpy.oracle", GQA_ONLY, "torch.fused", "--wide"]) == 0
    out = _squashed(capsys.readouterr().out)
    for column in ("supports", "notsupported(why)"):
        assert column in out
    assert "gqa:nogrouped-queryattentionhere;mqa:" in out
    assert "pipinstall'attnsuite[torch]'" in out


def test_json_keeps_every_reason_whole(no_torch, capsys):
    assert listing.main(["numpy.oracle", GQA_ONLY, "torch.fused", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["torch.fused"]["status"] == "unavailable"
    assert data["torch.fused"]["reason"] == ("attnsuite_no_such_torch is not installed "
                                             "(pip install 'attnsuite[torch]')")
    assert data[GQA_ONLY]["features"]["gqa"] == "no grouped-query attention here"
