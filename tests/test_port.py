"""``attnsuite port`` end to end on a tiny HF Llama saved here (examples/tiny_llama.py):
a right port agrees (exit 0), a wrong RoPE port fails with a message pointing at RoPE
(exit 1), and a checkpoint that cannot be read, lacks a key or has the wrong shape is a
usage error naming it (exit 2)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import require

require("torch")
pytest.importorskip("transformers")

import torch  # noqa: E402

from attnsuite.cli import main as attnsuite_main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("tiny_llama", ROOT / "examples" / "tiny_llama.py")
tiny_llama = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(tiny_llama)

EAGER = "transformers.LlamaAttention.eager"
SWAPPED = "numpy:tests.plugins.rope_impls:swapped_style"
# Few cases, each a numeric one the agreement compares.
PERMUTE_MESSAGE = ("RoPE: the checkpoint's wq/wk (as the target gets them) look like the interleaved "
                   "(Meta) RoPE layout while the target's RoPE is half-style (RoPE style interleaved "
                   "vs half): permute them (interleaved_to_half, in attnsuite.impls.convert.rope)")
CASES = ["--case", "*-B2-Lq5-Lk5-float32", "--case", "*-B2-Lq5-Lk9-mask_random-float32"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("port")
    hf = tiny_llama.save_tiny_llama(out / "tiny-llama")
    return {"hf": hf, "meta": tiny_llama.save_meta(hf, out / "meta"),
            "unpermuted": tiny_llama.save_unpermuted(hf, out / "unpermuted")}


def port(capsys, *args) -> tuple[int, str, str]:
    code = attnsuite_main(["port", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_hf_llama_layer_ported_to_the_oracle_and_torch_agrees(checkpoints, capsys, tmp_path):
    code, out, err = port(capsys, checkpoints["hf"], "--layer", 0, "--source", EAGER,
                          "--target", "numpy.oracle", "--target", "transformers.LlamaAttention.sdpa",
                          "--report", tmp_path / "report", "--junit-xml", tmp_path / "junit.xml", *CASES)
    assert code == 0, out + err
    assert "PORT OK" in out
    # The spec came from config.json: grouped heads, causal, half-style RoPE.
    assert "num_kv_heads=2" in out and "rope={'style': 'half'}" in out
    report = json.loads((tmp_path / "report" / "conformance.json").read_text())
    compared = [i for i in report["implementations"] if i["kind"] == "port"]
    assert [i["name"] for i in compared] == [f"port: {EAGER} -> numpy.oracle",
                                             f"port: {EAGER} -> transformers.LlamaAttention.sdpa"]
    assert all(i["verdict"] == "pass" and i["counts"] == {"pass": 2} for i in compared)
    assert report["environment"]["port"]["source"]["implementation"] == EAGER
    assert f'name="port: {EAGER} -&gt; numpy.oracle"' in (tmp_path / "junit.xml").read_text()
    # The weights the sides ran on stay beside the report, for the reproduce lines.
    assert (tmp_path / "report" / "source-weights.npz").is_file()


# The ports below run on the oracle alone (seconds): it computes either RoPE style, so the
# interleaved source and the half-style target meet only through the wq/wk permutation.

def test_meta_checkpoint_permuted_by_the_suite_agrees(checkpoints, capsys):
    code, out, err = port(capsys, checkpoints["meta"], "--layout", "meta-llama", "--layer", 0,
                          "--source", "numpy.oracle", "--target", "numpy.oracle",
                          "--target-style", "half", *CASES)
    assert code == 0, out + err
    # The spec came from params.json: interleaved RoPE for Meta's wq/wk, half for the targets.
    assert "rope={'style': 'interleaved'}" in out and "rope={'style': 'half'}" in out
    assert "interleaved_to_half" in out and "PORT OK" in out


def test_port_without_the_wq_wk_permutation_fails_pointing_at_rope(checkpoints, capsys):
    code, out, err = port(capsys, checkpoints["meta"], "--layout", "meta-llama", "--layer", 0,
                          "--source", "numpy.oracle", "--target", "numpy.oracle",
                          "--ported", checkpoints["unpermuted"], *CASES)
    assert code == 1, out + err
    verdict = out.strip().splitlines()[-1]
    assert verdict == "PORT FAILS: port: numpy.oracle -> numpy.oracle: " + PERMUTE_MESSAGE
    # Each side passes the oracle on its own weights: only the pair disagrees.
    assert out.count("PASS  numpy.oracle") == 2


def test_target_with_the_rope_style_swapped_fails_pointing_at_rope(checkpoints, capsys):
    code, out, err = port(capsys, checkpoints["hf"], "--layer", 0, "--source", "numpy.oracle",
                          "--target", SWAPPED, *CASES)
    assert code == 1, out + err
    verdict = out.strip().splitlines()[-1]
    assert verdict.endswith(": RoPE style interleaved vs half: the target rotates interleaved "
                            "pairs where the spec says half")


def test_a_disagreement_rope_does_not_explain_is_not_blamed_on_rope(checkpoints, capsys):
    code, out, err = port(capsys, checkpoints["hf"], "--layer", 0, "--source", "numpy.oracle",
                          "--target", "numpy:tests.plugins.numpy_impls:wrong_scale", *CASES)
    assert code == 1, out + err
    assert "output.agrees_with_source: FAIL" in out
    assert "RoPE" not in out.strip().splitlines()[-1]


@pytest.mark.parametrize("change, message", [
    ("missing", "missing key 'model.layers.0.self_attn.k_proj.weight'"),
    ("shape", "model.layers.0.self_attn.k_proj.weight: shape (16, 16), expected (16, 32)"),
    ("garbage", "cannot read it as safetensors"),
])
def test_bad_checkpoint_is_a_usage_error_naming_key_or_file(checkpoints, capsys, tmp_path, change,
                                                            message):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text((checkpoints["hf"] / "config.json").read_text())
    state = load_file(str(checkpoints["hf"] / "model.safetensors"))
    key = "model.layers.0.self_attn.k_proj.weight"
    if change == "missing":
        del state[key]
    elif change == "shape":
        state[key] = torch.zeros(16, 16)
    if change == "garbage":
        (folder / "model.safetensors").write_bytes(b"not a checkpoint")
    else:
        save_file(state, str(folder / "model.safetensors"))
    code, out, err = port(capsys, folder, "--layer", 0, "--source", EAGER, "--target", "numpy.oracle")
    assert code == 2
    assert message in err and str(folder) in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--layer", 5], "no key starts with 'model.layers.5.self_attn.'"),
    (["--prefix", "model.layers.0.self_attn.", "--layout", "keras"],
     "missing key 'model.layers.0.self_attn.query_dense/vars/0'"),
    (["--layer", 0, "--layout", "keras"], "--layer: layout keras has no standard key prefix"),
    ([], "give --layer N or --prefix"),
])
def test_wrong_layer_or_layout_is_a_usage_error(checkpoints, capsys, args, message):
    code, out, err = port(capsys, checkpoints["hf"], *args, "--source", EAGER,
                          "--target", "numpy.oracle")
    assert code == 2 and message in err


@pytest.mark.parametrize("spec, message", [
    ("{num_heads: 4}", "--spec: neither JSON nor a file of it"),
    ('{"num_heads": 4, "rope": {"theta": -1}}', "AttentionSpec.rope: 'theta' must be"),
])
def test_bad_spec_is_a_usage_error_naming_it(checkpoints, capsys, spec, message):
    code, out, err = port(capsys, checkpoints["meta"], "--layout", "meta-llama", "--layer", 0,
                          "--spec", spec, "--source", "numpy.oracle", "--target", EAGER)
    assert code == 2 and message in err


def test_meta_checkpoint_without_params_json_or_spec_asks_for_num_heads(checkpoints, capsys, tmp_path):
    alone = tmp_path / "consolidated.00.pth"
    alone.write_bytes(checkpoints["meta"].read_bytes())
    code, out, err = port(capsys, alone, "--layout", "meta-llama", "--layer", 0,
                          "--source", "numpy.oracle", "--target", EAGER)
    assert code == 2 and "num_heads" in err and "--spec" in err


def test_ported_checkpoint_of_another_width_is_a_usage_error(checkpoints, capsys, tmp_path):
    narrow = {"wq": np.zeros((16, 16)), "wk": np.zeros((16, 16)), "wv": np.zeros((16, 16)),
              "wo": np.zeros((16, 16))}
    np.savez(tmp_path / "narrow.npz", **narrow)
    code, out, err = port(capsys, checkpoints["hf"], "--layer", 0, "--source", EAGER,
                          "--target", "numpy.oracle", "--ported", tmp_path / "narrow.npz",
                          "--ported-prefix", "")
    assert code == 2 and "weights['wq']: expected shape (32, 32), got (16, 16)" in err


def test_cross_attention_state_dict_ported_to_ours_agrees(capsys, tmp_path):
    """A rope-free layer (nn.MultiheadAttention with kdim and vdim) inside a model's state:
    the cases stay three-tensor calls, and our fused layer agrees with it."""
    torch.manual_seed(0)
    layer = torch.nn.MultiheadAttention(16, 4, kdim=8, vdim=12, batch_first=True)
    torch.save({"decoder": {"cross": layer.state_dict()}}, tmp_path / "model.pt")
    code, out, err = port(capsys, tmp_path / "model.pt", "--prefix", "decoder.cross.",
                          "--spec", '{"num_heads": 4}', "--source", "torch.nn.MultiheadAttention",
                          "--target", "torch.fused", "--case", "*-B2-Lq5-Lk9-mask_random-float32")
    assert code == 0, out + err
    assert "[torch-mha, prefix 'decoder.cross.']" in out and "kdim=8, vdim=12" in out
    assert "PORT OK" in out and "(outputs compared on 1 case," in out
