"""The case catalog: unique ids, reproducible seeds, every listed feature covered, and
inputs that really are what the case says (masks, stress, rounding)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings

from attnsuite.conformance.cases import (HUGE_VALUE, OVERFLOW_LOGIT, PROFILES, Case, case_strategy, catalog,
                               extreme_visible_logit, find_case)
from attnsuite.conformance.checks import Options, Subject, judge_case, reference
from attnsuite.impls.backends import load_backend
from attnsuite.impls.oracle import rounding, structural_mask, visibility
from attnsuite.impls.spec import AttentionSpec
from tests.plugins import numpy_impls

DEFAULT = catalog("default")

# The coverage the issue asks of the default profile, as tags.
REQUIRED_TAGS = [
    "batch1", "batched", "length1", "odd_length", "lq_lt_lk", "lq_gt_lk", "long",
    "one_head", "mha", "many_heads", "gqa", "mqa", "value_head_dim", "cross", "out_dim",
    "proj_bias", "no_proj_bias", "custom_scale",
    "float64", "float32", "float16", "bfloat16",
    "mask_none", "mask_batch", "mask_head", "mask_key_padding", "mask_random", "mask_2d",
    "mask_all_visible", "mask_fully_masked_rows", "fully_masked",
    "causal_top_left", "causal_bottom_right", "window", "bias", "softcap",
    "stress_large_logits", "stress_masked_huge_values", "self_attention",
    "stateless", "deterministic", "dropout", "dropout_training",
]


def test_ids_are_unique_and_profiles_nest():
    ids = {}
    for profile in PROFILES:
        cases = catalog(profile)
        ids[profile] = [c.id for c in cases]
        assert len(set(ids[profile])) == len(cases), f"duplicate ids in {profile}"
    assert set(ids["quick"]) <= set(ids["default"]) <= set(ids["full"])
    assert len(ids["quick"]) < len(ids["default"]) < len(ids["full"])


@pytest.mark.parametrize("tag", REQUIRED_TAGS)
def test_default_profile_covers(tag):
    assert any(tag in c.tags for c in DEFAULT), f"no default case is tagged {tag!r}"


@pytest.mark.parametrize("causal", ["top_left", "bottom_right"])
@pytest.mark.parametrize("lengths", ["lq_lt_lk", "lq_gt_lk"])
def test_both_causal_alignments_with_both_length_orders(causal, lengths):
    assert any(f"causal_{causal}" in c.tags and lengths in c.tags for c in DEFAULT)


def test_ids_spell_the_features():
    case = find_case("gqa4_2-E16-causal_br-B2-Lq5-Lk9-mask_random-float32")
    assert case.spec == AttentionSpec(16, 4, num_kv_heads=2, causal="bottom_right")
    assert (case.B, case.L_q, case.L_k, case.mask, case.dtype) == (2, 5, 9, "random", "float32")
    assert {"gqa", "causal_bottom_right", "mask_random", "lq_lt_lk", "float32"} <= set(case.tags)


def test_seeds_are_reproducible_and_depend_on_the_run_seed():
    first, again, other = catalog("quick"), catalog("quick"), catalog("quick", seed=1)
    assert [c.seed for c in first] == [c.seed for c in again]
    assert all(a.seed != b.seed for a, b in zip(first, other))
    assert len({c.seed for c in first}) == len(first)
    for case in first[:6]:
        x, y = case.materialize(), case.materialize()
        for name in ("query", "key", "value", "d_out"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=case.id)
        if x.mask is not None:
            np.testing.assert_array_equal(x.mask, y.mask, err_msg=case.id)


def test_case_round_trips_through_a_dict():
    for case in catalog("default"):
        again = Case.from_dict(case.to_dict())
        assert again == case and again.id == case.id and again.tags == case.tags


def test_unknown_case_id_names_near_ones():
    with pytest.raises(ValueError, match="did you mean"):
        find_case("mha2-E8-B2-Lq5-Lk5-float33")


@pytest.mark.parametrize("case", DEFAULT, ids=lambda c: c.id)
def test_inputs_are_what_the_case_says(case):
    if case.checks == ("dropout",):
        return  # the dropout probe builds its own inputs (tests/test_gate_behaviour.py)
    data = case.materialize()
    s, r = case.spec, rounding(case.dtype)
    for name in ("query", "key", "value", "d_out"):      # already rounded to the dtype
        array = getattr(data, name)
        np.testing.assert_array_equal(r(array), array, err_msg=f"{case.id}: {name}")
    for name, w in data.weights.items():
        np.testing.assert_array_equal(r(w), w, err_msg=f"{case.id}: {name}")
    assert data.query.shape == (case.B, case.L_q, s.E) and data.d_out.shape == (case.B, case.L_q, s.E_o)
    if case.mask == "none":
        assert data.mask is None
    else:
        assert data.mask.dtype == bool and data.mask.ndim in (2, 4), case.id
    if case.bias:
        assert data.bias.ndim in (2, 4), case.id
    # Rows with no visible key exist exactly when the case is tagged so.
    assert data.fully_masked.any() == ("fully_masked" in case.tags), case.id
    visible = visibility(s, case.B, case.L_q, case.L_k, data.mask)
    if "fully_masked" not in case.tags:
        assert visible.any(-1).all(), f"{case.id}: an unintended empty row"
    if case.form == "self":
        assert data.key is data.query and data.value is data.query
    if case.form == "kv":
        assert data.key is data.value
    if case.stress == "large_logits":
        logit = extreme_visible_logit(s, data.weights, data.query, data.key, data.mask)
        assert logit > OVERFLOW_LOGIT[case.dtype], f"{case.id}: largest logit {logit}"
    if case.stress == "masked_huge_values":
        padded = ~data.mask[:, 0, 0, :]
        assert padded.any() and not (visible & padded[:, None, None, :]).any(), case.id
        assert np.all(data.value[padded] == r(np.float64(HUGE_VALUE[case.dtype]))), case.id


def test_masks_have_their_broadcast_shapes():
    shapes = {"batch": (2, 1, 5, 7), "head": (1, 2, 5, 7), "key_padding": (2, 1, 1, 7),
              "random": (2, 2, 5, 7), "2d": (5, 7), "all_visible": (2, 2, 5, 7)}
    for kind, shape in shapes.items():
        case = Case(AttentionSpec(8, 2), 2, 5, 7, "float32", mask=kind, seed=3)
        mask = case.materialize().mask
        assert mask.shape == shape, f"mask {kind}: {mask.shape}"
    assert Case(AttentionSpec(8, 2), 2, 5, 7, "float32", mask="all_visible").materialize().mask.all()


def test_invalid_cases_are_refused():
    with pytest.raises(ValueError, match="'self' needs"):
        Case(AttentionSpec(8, 2, kdim=4), 1, 3, 3, "float32", form="self")
    with pytest.raises(ValueError, match="'kv' needs"):
        Case(AttentionSpec(8, 2, kdim=4, vdim=6), 1, 3, 3, "float32", form="kv")
    with pytest.raises(ValueError, match="form"):
        Case(AttentionSpec(8, 2), 1, 3, 3, "float32", form="qk")
    with pytest.raises(ValueError, match="masked_huge_values"):
        Case(AttentionSpec(8, 2), 1, 3, 3, "float32", stress="masked_huge_values")
    with pytest.raises(ValueError, match="dtype"):
        Case(AttentionSpec(8, 2), 1, 3, 3, "float8")


def test_catalog_on_a_given_spec_keeps_the_spec():
    spec = AttentionSpec(12, 3, num_kv_heads=1, causal="bottom_right")
    cases = catalog("default", spec=spec)
    assert len({c.id for c in cases}) == len(cases)
    for case in cases:
        assert case.spec == spec or case.checks == ("dropout",), case.id
    assert not any(c.self_attention for c in catalog("default", spec=AttentionSpec(8, 2, kdim=4)))


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=case_strategy())
def test_generated_cases_are_valid(case):
    data = case.materialize()
    assert case.id.startswith("gen-") and case.id.endswith(f"seed{case.seed}")
    assert data.query.shape == (case.B, case.L_q, case.spec.E)
    structural_empty = not structural_mask(case.spec, case.L_q, case.L_k).any(-1).all()
    assert data.fully_masked.any() == (structural_empty or case.mask == "fully_masked_rows")


def _fails(impl, case) -> bool:
    subject = Subject(impl.__name__, impl, load_backend("numpy"))
    results = judge_case(subject, case, reference(case), Options())
    return any(r.status == "fail" for r in results)


def test_hypothesis_shrinks_a_failure_to_a_minimal_spec_and_shape():
    # Tiling the key/value heads instead of repeating each (h // group) is wrong only
    # with several key/value heads shared by several query heads.
    minimal = find(case_strategy(), lambda c: _fails(numpy_impls.gqa_tiled, c),
                   settings=settings(max_examples=300, database=None, derandomize=True,
                                     deadline=None, suppress_health_check=list(HealthCheck)))
    s = minimal.spec
    assert (s.H_kv, s.H) == (2, 4), minimal.id
    assert (minimal.B, minimal.L_q, minimal.L_k) == (1, 1, 1), minimal.id
    assert minimal.mask == "none" and minimal.bias is None and s.causal is None, minimal.id
    assert s.d_k == 1 and s.kdim is None and s.vdim is None and s.out_dim is None, minimal.id


def test_the_default_profile_holds_every_pair_of_feature_values():
    """Issue: feature interactions were hand-picked and some pairs never met. Read back from
    the default catalog's cases themselves (not from the generator's rows)."""
    from attnsuite.conformance.cases import PAIRWISE_FACTORS, _pairwise_allowed, case_levels
    from attnsuite.conformance.pairwise import feasible_pairs, pairs_of

    factors = {name: list(levels) for name, levels in PAIRWISE_FACTORS.items()}
    order = {name: i for i, name in enumerate(factors)}
    held = set()
    for case in catalog("default"):
        levels = {k: v for k, v in case_levels(case).items() if v is not None}
        held |= pairs_of(levels, order)
    missing = feasible_pairs(factors, _pairwise_allowed) - held
    assert not missing, f"{len(missing)} pairs never meet, e.g. {sorted(missing)[:5]}"
    # The levels the issue names are among them.
    assert {"gqa3", "mqa"} <= set(factors["heads"]) and PAIRWISE_FACTORS["heads"]["gqa3"] == (6, 2)
    long_L = PAIRWISE_FACTORS["lengths"]["long"][1]
    assert long_L > 128 and long_L % 64
    assert {"self", "kv", "qkv"} <= set(factors["form"])


def test_every_case_id_reads_back_into_its_case():
    """--case takes any id the suite prints: catalog cases of every profile, cases moved into
    a call form, and generated ones (whose id carries the seed)."""
    from attnsuite.conformance.cases import case_from_id, generated_cases

    cases = catalog("full") + [c.in_form(f) for c in catalog("default") for f in ("self", "kv")]
    cases += generated_cases(60, seed=11)
    for case in cases:
        again = case_from_id(case.id)
        assert (again.id, again.seed) == (case.id, case.seed), case.id
        a, b = case.materialize(), again.materialize()
        for name in ("query", "key", "value", "d_out"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=case.id)


@pytest.mark.parametrize("case_id, complaint", [
    ("mha2-E8-B2-Lq5-Lk5-float33", "float33"), ("mha2-E8-B2-Lq5-float32", "B<batch>"),
    ("xyz-E8-B2-Lq5-Lk5-float32", "head layout"), ("mha2-E8-frob-B2-Lq5-Lk5-float32", "spec token"),
    ("gen-mha2-E8-B2-Lq5-Lk5-float32", "seed"), ("mha2-E8-B2-Lq5-Lk5-float32-mask_random", "reads back")])
def test_an_id_that_spells_no_case_says_which_token(case_id, complaint):
    from attnsuite.conformance.cases import find_case

    with pytest.raises(ValueError, match=complaint):
        find_case(case_id)


def test_generated_cases_are_seeded():
    from attnsuite.conformance.cases import generated_cases

    assert [c.id for c in generated_cases(5, 3)] == [c.id for c in generated_cases(5, 3)]
    assert [c.id for c in generated_cases(5, 3)] != [c.id for c in generated_cases(5, 4)]
    assert all(c.generated and c.id.startswith("gen-") for c in generated_cases(5, 3))
