"""The feature cases that our implementations run in every framework (tests/test_ours.py),
the arrays each case gives the oracle, and the comparison every result is held to.

The cases come in three families of sizes, one for each relation of the lengths
(L_q == L_k, L_q > L_k, L_q < L_k), and vary the features within each. Every case costs
each framework a forward and a vjp per path and dtype (in JAX, compiles: about a second
on a small machine), so a feature joins an existing case where it can.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from conftest import make_inputs
from attnsuite.impls import AttentionSpec, init_weights

# Bound on max|got - oracle| relative to max|oracle| of the same tensor. float64 must be
# float64-accurate: a path that leaks float32 (errors near 1e-7) fails.
TOL = {"float64": 1e-10, "float32": 1e-4}
# A gradient that is zero in the math (softmax cancels the key bias) is judged against
# the scale of a sibling gradient instead of its own (which is rounding noise).
SCALE_OF = {"bk": "wk"}
B = 2


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    spec: AttentionSpec
    L_q: int
    L_k: int
    mask: str | None = None      # None | "rank2" | "rank4" (each with an empty query row)
    bias: str | None = None      # None | "rank2" | "rank4"


S = AttentionSpec
# L_q == L_k == 5: two heads, every size E.
SQUARE = S(8, 2)
# L_q 6 > L_k 4: grouped-query cross-attention with every size its own (d_v > d_k).
GROUPED = S(8, 4, num_kv_heads=2, kdim=5, vdim=7, head_dim=3, value_head_dim=5, out_dim=6)
# L_q 4 < L_k 6: multi-query with d_v < d_k.
MULTI_QUERY = S(8, 4, num_kv_heads=1, head_dim=4, value_head_dim=2)

CASES = [
    Case("plain", SQUARE, 5, 5),
    Case("custom_scale", SQUARE.replace(scale=0.9), 5, 5),
    Case("no_bias", SQUARE.replace(bias=False), 5, 5, mask="rank2"),
    Case("softcap", SQUARE.replace(softcap=1.0), 5, 5),
    Case("softcap_before_bias_and_mask", SQUARE.replace(softcap=1.0), 5, 5, "rank2", "rank4"),
    Case("bias_rank2", SQUARE, 5, 5, bias="rank2"),
    Case("window", SQUARE.replace(window=(1, 2)), 5, 5, bias="rank4"),
    Case("top_left_window", SQUARE.replace(causal="top_left", window=(1, 0)), 5, 5),
    Case("top_left_with_mask", SQUARE.replace(causal="top_left"), 5, 5, mask="rank4"),
    Case("bottom_right_square", SQUARE.replace(causal="bottom_right"), 5, 5, bias="rank2"),

    Case("grouped", GROUPED, 6, 4),
    Case("grouped_bias_rank4", GROUPED, 6, 4, bias="rank4"),
    Case("top_left_long_query", GROUPED.replace(causal="top_left"), 6, 4),
    Case("bottom_right_long_query", GROUPED.replace(causal="bottom_right"), 6, 4),  # 2 empty rows
    Case("everything_but_softcap", GROUPED.replace(scale=0.5, causal="top_left", window=(3, 0)),
         6, 4, mask="rank4", bias="rank4"),
    Case("everything", GROUPED.replace(scale=0.5, causal="bottom_right", window=(2, 1),
                                       softcap=2.0), 6, 4, mask="rank4", bias="rank2"),

    Case("multi_query", MULTI_QUERY, 4, 6),
    Case("multi_query_no_bias", MULTI_QUERY.replace(bias=False), 4, 6, mask="rank2"),
    Case("mask_rank2_long_key", MULTI_QUERY, 4, 6, mask="rank2"),
    Case("mask_rank4_long_key", MULTI_QUERY, 4, 6, mask="rank4"),
    Case("top_left_long_key", MULTI_QUERY.replace(causal="top_left"), 4, 6),
    Case("bottom_right_long_key", MULTI_QUERY.replace(causal="bottom_right"), 4, 6),
    Case("bottom_right_window_long_key", MULTI_QUERY.replace(causal="bottom_right", window=(2, 0)),
         4, 6, mask="rank2"),
    Case("top_left_softcap_long_key", MULTI_QUERY.replace(causal="top_left", softcap=3.0), 4, 6,
         bias="rank4"),
]
CASE = {c.id: c for c in CASES}

# The spec of each framework's layer tests (torch's Module, the Keras layer, JAX's
# init/apply): every size its own, grouped-query, bottom-right causal, and a dropout that
# inference must ignore.
LAYER_SPEC = S(8, 4, num_kv_heads=2, kdim=6, vdim=5, out_dim=7, causal="bottom_right", dropout=0.5)


def case_arrays(case: Case) -> dict:
    """Inputs, weights, cotangent, mask and bias of ``case``, seeded by its id (so that
    adding a case changes no other case's data)."""
    seed = zlib.crc32(case.id.encode()) % 10_000
    rng = np.random.default_rng(seed + 1)
    arrays = make_inputs(case.spec, B, case.L_q, case.L_k, seed=seed)
    arrays["weights"] = init_weights(case.spec, seed=seed)
    H, L_q, L_k = case.spec.H, case.L_q, case.L_k
    arrays["mask"] = None
    if case.mask == "rank2":
        arrays["mask"] = rng.random((L_q, L_k)) > 0.3
        arrays["mask"][1] = False                   # query row 1 sees nothing, in every head
    elif case.mask == "rank4":
        arrays["mask"] = rng.random((B, H, L_q, L_k)) > 0.3
        arrays["mask"][0, :, 1] = False             # row 1 of batch 0, in every head
        arrays["mask"][1, H - 1, 2] = False         # row 2 of batch 1, in one head only
    arrays["bias"] = None
    if case.bias == "rank2":
        arrays["bias"] = rng.standard_normal((L_q, L_k))
    elif case.bias == "rank4":
        arrays["bias"] = rng.standard_normal((1, H, L_q, L_k))
    return arrays


def assert_close(what: str, got, want: np.ndarray, tol: float, scale: float | None = None) -> None:
    """max|got - want| <= tol * scale (default scale: max|want|); a failure names the worst
    element: its index, both values, the absolute and relative error, and the bound."""
    got = np.asarray(got)
    scale = np.abs(want).max() if scale is None else scale
    assert got.shape == want.shape, f"{what}: shape {got.shape}, oracle {want.shape}"
    bad = ~np.isfinite(got)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(f"{what}: non-finite {got[first]} at {first}, "
                             f"oracle {float(want[first])!r}")
    err = np.abs(got - want)
    worst = tuple(int(i) for i in np.unravel_index(np.argmax(err), err.shape))
    assert err[worst] <= tol * scale, (
        f"{what}: worst element {worst}: got {float(got[worst])!r}, oracle {float(want[worst])!r}, "
        f"|err| {err[worst]:.3g} ({err[worst] / scale:.3g} of scale {scale:.3g}) "
        f"> bound {tol:g} of scale")


def assert_grads_close(where: str, grads: dict, want: dict, tol: float) -> None:
    """Every gradient the oracle has, and only those, each within ``tol`` of its scale."""
    assert set(grads) == set(want), f"{where}: gradients {sorted(grads)}, oracle {sorted(want)}"
    for name, g in grads.items():
        scale = np.abs(want[SCALE_OF.get(name, name)]).max()
        assert_close(f"{where} d{name}", g, want[name], tol, scale)
