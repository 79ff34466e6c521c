"""AttentionSpec (SPEC 1) and the parameter count (SPEC 2): validation, resolved sizes,
serialisation."""

from __future__ import annotations

import math

import pytest

from attnsuite.impls.spec import AttentionSpec
from attnsuite.impls.weights import param_count, weight_shapes

# Each row: the keyword arguments of an invalid spec, and the field its ValueError must name.
INVALID = [
    (dict(d_model=10, num_heads=3), "head_dim"),  # E % H != 0 with head_dim left out
    (dict(d_model=12, num_heads=4, num_kv_heads=3), "num_kv_heads"),
    (dict(d_model=8, num_heads=2, num_kv_heads=4), "num_kv_heads"),  # more kv heads than heads
    (dict(d_model=0, num_heads=1), "d_model"),
    (dict(d_model=-8, num_heads=2), "d_model"),
    (dict(d_model=8, num_heads=0), "num_heads"),
    (dict(d_model=8, num_heads=2, kdim=-1), "kdim"),
    (dict(d_model=8, num_heads=2, vdim=0), "vdim"),
    (dict(d_model=8, num_heads=2, num_kv_heads=0), "num_kv_heads"),
    (dict(d_model=8, num_heads=2, head_dim=0), "head_dim"),
    (dict(d_model=8, num_heads=2, value_head_dim=-3), "value_head_dim"),
    (dict(d_model=8, num_heads=2, out_dim=0), "out_dim"),
    (dict(d_model=True, num_heads=1), "d_model"),  # bool where an int is expected
    (dict(d_model=8, num_heads=2, head_dim=True), "head_dim"),
    (dict(d_model=8.0, num_heads=2), "d_model"),
    (dict(d_model=8, num_heads=2, dropout=1.0), "dropout"),
    (dict(d_model=8, num_heads=2, dropout=-0.1), "dropout"),
    (dict(d_model=8, num_heads=2, dropout=math.nan), "dropout"),
    (dict(d_model=8, num_heads=2, dropout=True), "dropout"),
    (dict(d_model=8, num_heads=2, window=(1.0, 2)), "window"),  # not ints
    (dict(d_model=8, num_heads=2, window=(True, 1)), "window"),
    (dict(d_model=8, num_heads=2, window=(1,)), "window"),  # wrong length
    (dict(d_model=8, num_heads=2, window=(1, 2, 3)), "window"),
    (dict(d_model=8, num_heads=2, window=(-1, 0)), "window"),  # negative
    (dict(d_model=8, num_heads=2, window=3), "window"),
    (dict(d_model=8, num_heads=2, causal="causal"), "causal"),
    (dict(d_model=8, num_heads=2, causal=True), "causal"),
    (dict(d_model=8, num_heads=2, softcap=0.0), "softcap"),
    (dict(d_model=8, num_heads=2, softcap=-1.0), "softcap"),
    (dict(d_model=8, num_heads=2, softcap=math.inf), "softcap"),
    (dict(d_model=8, num_heads=2, scale=0.0), "scale"),
    (dict(d_model=8, num_heads=2, scale=-0.5), "scale"),
    (dict(d_model=8, num_heads=2, scale=math.nan), "scale"),
    (dict(d_model=8, num_heads=2, scale="0.5"), "scale"),
    (dict(d_model=8, num_heads=2, bias=1), "bias"),
    (dict(d_model=8, num_heads=2, bias="yes"), "bias"),
]


@pytest.mark.parametrize("kwargs, field", INVALID, ids=[repr(kw) for kw, _ in INVALID])
def test_invalid_spec_raises_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError) as info:
        AttentionSpec(**kwargs)
    assert f"AttentionSpec.{field}:" in str(info.value), (kwargs, str(info.value))


def test_defaults():
    spec = AttentionSpec(d_model=8, num_heads=2)
    assert (spec.kdim, spec.vdim, spec.num_kv_heads, spec.head_dim, spec.value_head_dim,
            spec.out_dim) == (None,) * 6
    assert (spec.bias, spec.scale, spec.causal, spec.window, spec.softcap, spec.dropout) == (
        True, None, None, None, None, 0.0)


# Each row: a spec, and its resolved (E, E_k, E_v, H, H_kv, d_k, d_v, E_o, logit_scale, group_size).
RESOLVED = [
    (AttentionSpec(d_model=12, num_heads=4), (12, 12, 12, 4, 4, 3, 3, 12, 1 / math.sqrt(3), 1)),
    (AttentionSpec(d_model=12, num_heads=6, num_kv_heads=2, kdim=5, vdim=7, head_dim=4,
                   value_head_dim=3, out_dim=9, scale=0.25),
     (12, 5, 7, 6, 2, 4, 3, 9, 0.25, 3)),
    (AttentionSpec(d_model=10, num_heads=3, head_dim=5, num_kv_heads=1),  # E % H != 0 is fine here
     (10, 10, 10, 3, 1, 5, 5, 10, 1 / math.sqrt(5), 3)),
]


@pytest.mark.parametrize("spec, expected", RESOLVED, ids=[str(s) for s, _ in RESOLVED])
def test_resolved_sizes(spec, expected):
    got = (spec.E, spec.E_k, spec.E_v, spec.H, spec.H_kv, spec.d_k, spec.d_v, spec.E_o,
           spec.logit_scale, spec.group_size)
    assert got == pytest.approx(expected, rel=1e-15), spec


ROUND_TRIP = [
    AttentionSpec(d_model=8, num_heads=2),
    AttentionSpec(d_model=10, num_heads=3, head_dim=4),  # E % H != 0: to_dict once crashed here
    AttentionSpec(d_model=12, num_heads=6, num_kv_heads=2, kdim=5, vdim=7, head_dim=4,
                  value_head_dim=3, out_dim=9, bias=False, scale=0.25, causal="bottom_right",
                  window=(2, 0), softcap=30.0, dropout=0.1),
]


@pytest.mark.parametrize("spec", ROUND_TRIP, ids=str)
def test_to_dict_from_dict_round_trip(spec):
    data = spec.to_dict()
    assert AttentionSpec.from_dict(data) == spec, data


def test_to_dict_holds_only_what_differs_from_the_defaults():
    spec = AttentionSpec(d_model=8, num_heads=2, causal="top_left", window=(1, 2))
    assert spec.to_dict() == {"d_model": 8, "num_heads": 2, "causal": "top_left", "window": [1, 2]}


def test_window_given_as_a_list_is_stored_as_a_tuple():
    assert AttentionSpec(d_model=8, num_heads=2, window=[3, 1]).window == (3, 1)


def test_from_dict_rejects_an_unknown_field():
    with pytest.raises(ValueError, match=r"unknown field.*'heads'"):
        AttentionSpec.from_dict({"d_model": 8, "num_heads": 2, "heads": 2})


def test_from_dict_validates_like_the_constructor():
    with pytest.raises(ValueError, match=r"AttentionSpec\.dropout:"):
        AttentionSpec.from_dict({"d_model": 8, "num_heads": 2, "dropout": 1.5})


@pytest.mark.parametrize("bias, expected", [(True, 1_050_624), (False, 1_048_576)])
def test_param_count_of_the_spec_example(bias, expected):
    assert param_count(AttentionSpec(d_model=512, num_heads=8, bias=bias)) == expected


@pytest.mark.parametrize("bias", [True, False])
def test_param_count_follows_the_spec_formula_on_a_cross_gqa_spec(bias):
    spec = AttentionSpec(d_model=12, num_heads=6, num_kv_heads=2, kdim=5, vdim=7, head_dim=4,
                         value_head_dim=3, out_dim=9, bias=bias)
    E, E_k, E_v, H, H_kv, d_k, d_v, E_o = 12, 5, 7, 6, 2, 4, 3, 9  # written out, not read back
    expected = E * H * d_k + E_k * H_kv * d_k + E_v * H_kv * d_v + H * d_v * E_o
    if bias:
        expected += H * d_k + H_kv * d_k + H_kv * d_v + E_o
    assert param_count(spec) == expected, spec


def test_weight_shapes_follow_the_canonical_layout():
    spec = AttentionSpec(d_model=12, num_heads=6, num_kv_heads=2, kdim=5, vdim=7, head_dim=4,
                         value_head_dim=3, out_dim=9)
    assert weight_shapes(spec) == {
        "wq": (12, 24), "wk": (5, 8), "wv": (7, 6), "wo": (18, 9),
        "bq": (24,), "bk": (8,), "bv": (6,), "bo": (9,),
    }
    assert set(weight_shapes(spec.replace(bias=False))) == {"wq", "wk", "wv", "wo"}
