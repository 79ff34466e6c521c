"""``attnsuite list``: one probing process per framework, all at once; a default table
that fits 100 columns, ``--wide`` with the reasons for unsupported features; install
hints that survive the terminal library's markup; probes kept in a cache that any change
of the factory's code or the machine invalidates."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import pytest

from attnsuite.impls import backends, listing, probe_cache
from attnsuite.impls.entry import Entry
from attnsuite.impls.registry import all_entries, find_entry, load_factory

GQA_ONLY = "numpy:tests.plugins.numpy_impls:unsupported_gqa"
FEATURES = len(listing.FEATURE_PROBES) + 1 + len(listing.INPUT_FEATURES)   # + decode
EVERY_FEATURE = f"yes, every feature ({FEATURES})"


@pytest.fixture(autouse=True)
def cache_folder(tmp_path, monkeypatch):
    """Every listing here caches in a fresh folder, never the user's."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(probe_cache.CACHE_DIR_VARIABLE, str(folder))
    return folder


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
    assert EVERY_FEATURE in out and f"yes, {FEATURES - 3} of {FEATURES} features" in out
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


def test_the_call_inputs_a_factory_declares_are_features(capsys):
    declared, undeclared = "numpy:tests.plugins.inputs:declared", "numpy:tests.plugins.inputs:undeclared"
    assert listing.main([declared, undeclared, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    features = data[declared]["features"]
    assert features["additive_bias"] == "takes no additive bias (declared)"
    assert features["mask_rank2"] is True and features["mask_rank4"] is True
    assert features["mask_per_head"].startswith("takes no per-head mask")
    assert features["dropout"] == "applies no dropout when training (declared)"
    assert all(data[undeclared]["features"][f] is True for f in (*listing.INPUT_FEATURES, "dropout"))


# ---------------------------------------------------------------------------------------
# The probe cache.

def _listed(capsys, *argv) -> tuple[str, str]:
    """(the table, its last line: which rows were probed and which came from the cache)."""
    assert listing.main(list(argv)) == 0
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    return "\n".join(lines[:-1]), lines[-1]


def _no_probing(monkeypatch):
    def probe_group(env, members, started):
        raise AssertionError(f"probed {[m.name for m in members]} instead of using the cache")
    monkeypatch.setattr(listing, "_probe_group", probe_group)


def test_a_cache_hit_gives_the_same_table_and_json_as_a_fresh_probe(capsys, monkeypatch):
    fresh, provenance = _listed(capsys, "numpy.oracle", GQA_ONLY, "--wide")
    assert provenance == "probed now: 2"
    assert listing.main(["numpy.oracle", GQA_ONLY, "--json", "--no-cache"]) == 0
    fresh_json = json.loads(capsys.readouterr().out)
    _no_probing(monkeypatch)
    cached, provenance = _listed(capsys, "numpy.oracle", GQA_ONLY, "--wide")
    assert cached == fresh
    assert provenance.startswith("probed now: 0; from the cache: all 2;")
    assert "--refresh" in provenance
    assert listing.main(["numpy.oracle", GQA_ONLY, "--json"]) == 0
    cached_json = json.loads(capsys.readouterr().out)
    assert all(cached_json[name].pop("cached") is True for name in cached_json)
    assert all(fresh_json[name].pop("cached") is False for name in fresh_json)
    assert cached_json == fresh_json


PLUGIN = """
from attnsuite.impls.errors import Unsupported

def make(spec):
    {guard}
    def fn(params, query, key, value, mask=None, bias=None):
        return query
    return fn
"""


def test_editing_the_plugin_module_invalidates_its_entry(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)     # a plug-in's module is found in the current directory
    module = tmp_path / "listing_probe_plugin.py"
    name = "numpy:listing_probe_plugin:make"
    module.write_text(PLUGIN.format(guard="pass"))
    assert listing.main([name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[name]["features"]["softcap"] is True
    module.write_text(PLUGIN.format(guard="if spec.softcap is not None: raise Unsupported('no softcap here')"))
    assert listing.main([name, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[name]
    assert result["cached"] is False
    assert result["features"]["softcap"] == "no softcap here"
    assert listing.main([name, "--json"]) == 0      # and the new answer is what is cached now
    result = json.loads(capsys.readouterr().out)[name]
    assert result["cached"] is True and result["features"]["softcap"] == "no softcap here"


def test_the_recorded_sources_are_the_suites_and_the_plugins_not_the_standard_librarys():
    entry = find_entry(GQA_ONLY)
    load_factory(entry)
    sources = probe_cache.loaded_sources(entry, probe_cache.SourceHashes())
    assert listing.__file__ in sources and probe_cache.__file__ in sources
    assert json.__file__ not in sources and pytest.__file__ not in sources
    assert sys.modules["tests.plugins.numpy_impls"].__file__ in sources


@pytest.mark.parametrize("garbage", ["{not json", "[]", '{"key": {}, "sources": {}}', ""])
def test_a_corrupt_cache_file_is_ignored_and_replaced(garbage, capsys, cache_folder):
    _listed(capsys, "numpy.oracle")
    path = probe_cache.ProbeCache(cache_folder).path(find_entry("numpy.oracle"))
    path.write_text(garbage)
    table, provenance = _listed(capsys, "numpy.oracle")
    assert provenance == "probed now: 1" and EVERY_FEATURE in table
    assert json.loads(path.read_text())["result"]["features"]["gqa"] is True


def _tamper(cache_folder, name: str) -> None:
    """Rewrite the cached answer for ``name``, keeping its key: only a probe can undo it."""
    path = probe_cache.ProbeCache(cache_folder).path(find_entry(name))
    record = json.loads(path.read_text())
    record["result"]["features"]["gqa"] = "tampered"
    path.write_text(json.dumps(record))


def test_refresh_probes_again_and_renews_the_cache(capsys, cache_folder):
    _listed(capsys, "numpy.oracle")
    _tamper(cache_folder, "numpy.oracle")
    table, _ = _listed(capsys, "numpy.oracle")
    assert f"yes, {FEATURES - 1} of {FEATURES} features" in table      # the cache is trusted while its key holds
    table, provenance = _listed(capsys, "numpy.oracle", "--refresh")
    assert provenance == "probed now: 1" and EVERY_FEATURE in table
    table, provenance = _listed(capsys, "numpy.oracle")
    assert "from the cache" in provenance and EVERY_FEATURE in table


def test_a_variable_that_steers_the_devices_invalidates_the_cache(capsys, cache_folder, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)   # a run may have set it already
    _listed(capsys, "numpy.oracle")
    _tamper(cache_folder, "numpy.oracle")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    table, provenance = _listed(capsys, "numpy.oracle")
    assert provenance == "probed now: 1" and EVERY_FEATURE in table


def test_no_cache_neither_reads_nor_writes_it(capsys, cache_folder):
    _listed(capsys, "numpy.oracle")
    _tamper(cache_folder, "numpy.oracle")
    table, provenance = _listed(capsys, "numpy.oracle", "--no-cache")
    assert provenance == "probed now: 1" and EVERY_FEATURE in table
    assert "tampered" in probe_cache.ProbeCache(cache_folder).path(find_entry("numpy.oracle")).read_text()


def test_an_answer_from_the_cache_imports_no_framework(capsys):
    _listed(capsys, "numpy.oracle")
    script = textwrap.dedent("""
        import sys
        from attnsuite.impls import listing
        assert listing.main(["numpy.oracle"]) == 0
        print(sorted(m for m in ("numpy", "ml_dtypes", "torch", "jax", "tensorflow", "keras")
                     if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "from the cache: all 1;" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1] == "[]"


def test_only_what_the_cache_lacks_is_probed_and_the_footnote_says_which(capsys):
    _listed(capsys, "numpy.oracle")
    assert listing.main(["numpy.oracle", GQA_ONLY]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= listing.NARROW_WIDTH
    footnote = " ".join(out.split("attnsuite list --wide")[-1].split())
    assert f"probed now: 1 ({GQA_ONLY}); from the cache: 1;" in footnote


def test_a_cache_folder_that_cannot_be_written_only_warns(capsys, cache_folder):
    cache_folder.write_text("a file where the folder should be")
    assert listing.main(["numpy.oracle", GQA_ONLY]) == 0
    out, err = capsys.readouterr()
    assert out.rstrip().endswith("probed now: 2") and EVERY_FEATURE in out
    assert len([line for line in err.splitlines() if "not cached" in line]) == 1
