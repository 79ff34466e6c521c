"""The mask helper for mask-only layers (impls/masks.py): in every rank, polarity and
form it is the oracle's visibility (causal + window + user mask), it refuses a mask the
rank cannot carry, and it works on traced JAX masks and on torch tensors."""

from __future__ import annotations

import numpy as np
import pytest

from attnsuite import visible_mask
from attnsuite.impls import AttentionSpec, Unsupported
from attnsuite.impls.backends import framework_status
from attnsuite.impls.oracle import visibility

S = AttentionSpec
B, H, L_Q, L_K = 2, 3, 4, 6
SPECS = [S(12, H, causal="top_left"), S(12, H, causal="bottom_right", window=(1, 0)),
         S(12, H, window=(0, 2)), S(12, H)]


def user_masks(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {"none": None, "rank2": rng.random((L_Q, L_K)) > 0.4,
            "rank4-batch": rng.random((B, 1, L_Q, L_K)) > 0.4,
            "rank4-heads": rng.random((B, H, L_Q, L_K)) > 0.4}


def expected(spec, mask):
    return visibility(spec, B, L_Q, L_K, mask)


def as_full(got, rank):
    """The helper's result broadcast back to (B, H, L_q, L_k)."""
    got = np.asarray(got)
    got = got[:, None] if rank == 3 else got
    return np.broadcast_to(got, (B, H, L_Q, L_K))


# Which user masks each rank can carry.
CARRIED = {2: ("none", "rank2"), 3: ("none", "rank2", "rank4-batch"),
           4: ("none", "rank2", "rank4-batch", "rank4-heads")}


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("rank", [2, 3, 4])
@pytest.mark.parametrize("mask_name", list(user_masks()))
def test_every_rank_and_polarity_is_the_oracles_visibility(spec, rank, mask_name):
    mask = user_masks()[mask_name]
    if mask_name not in CARRIED[rank]:
        with pytest.raises(Unsupported, match=f"rank-{rank} mask"):
            visible_mask(spec, L_Q, L_K, mask, rank=rank)
        return
    want = expected(spec, mask)
    got = visible_mask(spec, L_Q, L_K, mask, rank=rank)
    if got is None:
        assert want.all(), "None was returned although some key is hidden"
        return
    assert got.dtype == bool and got.ndim == rank
    np.testing.assert_array_equal(as_full(got, rank), want)
    hidden = visible_mask(spec, L_Q, L_K, mask, rank=rank, attend=False)
    np.testing.assert_array_equal(as_full(hidden, rank), ~want)
    additive = visible_mask(spec, L_Q, L_K, mask, rank=rank, additive=-1e9, dtype=np.float32)
    assert additive.dtype == np.float32
    np.testing.assert_array_equal(as_full(additive, rank), np.where(want, 0.0, -1e9).astype(np.float32))


@pytest.mark.parametrize("rank", [3, 4])
def test_broadcast_gives_every_dimension_its_full_size(rank):
    spec = SPECS[1]
    mask = user_masks()["rank2"]
    got = visible_mask(spec, L_Q, L_K, mask, rank=rank, batch=B, broadcast=True)
    assert got.shape == ((B, L_Q, L_K) if rank == 3 else (B, H, L_Q, L_K))
    np.testing.assert_array_equal(as_full(got, rank), expected(spec, mask))


def test_nothing_hidden_is_none_and_a_spec_rule_alone_is_a_mask():
    assert visible_mask(S(12, H), L_Q, L_K) is None
    got = visible_mask(S(12, H, causal="top_left"), L_Q, L_K, rank=2)
    np.testing.assert_array_equal(got, np.tril(np.ones((L_Q, L_K), bool)))


@pytest.mark.parametrize("kwargs, field", [({"rank": 5}, "rank"),
                                           ({"rank": 3, "broadcast": True}, "batch")])
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        visible_mask(SPECS[0], L_Q, L_K, **kwargs)


def test_a_traced_jax_mask_is_combined_in_jax():
    if not framework_status("jax")[0]:
        pytest.skip(framework_status("jax")[1])
    import jax
    import jax.numpy as jnp

    spec, mask = SPECS[1], user_masks()["rank4-heads"]
    got = jax.jit(lambda m: visible_mask(spec, L_Q, L_K, m, rank=4, attend=False, xp=jnp))(
        jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(got), ~expected(spec, mask))


def test_a_torch_mask_is_combined_in_torch():
    if not framework_status("torch")[0]:
        pytest.skip(framework_status("torch")[1])
    import torch

    spec, mask = SPECS[0], user_masks()["rank4-batch"]
    got = visible_mask(spec, L_Q, L_K, torch.as_tensor(mask), rank=4, additive=-np.inf,
                       dtype=torch.float16, xp=torch)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float16
    np.testing.assert_array_equal(as_full(got.float().numpy(), 4),
                                  np.where(expected(spec, mask), 0.0, -np.inf))


# ---------------------------------------------------------------------------------------
# The README's plug-in example (tests/plugins/mask_only.py): a mask-only layer that
# declares causal and window support through the helper.

EXAMPLE = "tests/plugins/mask_only.py"


def example_code() -> str:
    from pathlib import Path

    text = (Path(__file__).parent.parent / EXAMPLE).read_text()
    return text[text.index("import jax"):]


def test_the_readme_shows_the_example_verbatim():
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert example_code() in readme, f"README.md's plug-in example differs from {EXAMPLE}"


def test_the_example_is_judged_and_passes_on_causal_and_window_cases():
    if not framework_status("jax")[0]:
        pytest.skip(framework_status("jax")[1])
    from attnsuite.conformance.runner import check

    result = check(["jax:tests.plugins.mask_only:factory"], profile="default", dtypes=["float32"],
                   case_filter=lambda case: case.spec.causal is not None or case.spec.window is not None)
    impl = result.implementations[0]
    judged = [r for r in impl.results if r.status != "unsupported"]
    assert impl.verdict == "pass" and judged, f"{impl.verdict}: {impl.reason}"
    judged_cases = [c for c in result.cases if c.id in {r.case_id for r in judged}]
    for feature, has in {"causal top_left": lambda s: s.causal == "top_left",
                         "causal bottom_right": lambda s: s.causal == "bottom_right",
                         "window": lambda s: s.window is not None}.items():
        assert any(has(c.spec) for c in judged_cases), f"no {feature} case judged"
