"""The catalog of deliberately broken implementations, and what must catch each.

The suite is only as good as the bugs it catches. Each entry names a factory in
``attnsuite.impls.broken.{tensorflow,torch,jax}`` that gets one thing wrong the way a person
plausibly would, and an ``Expect``: the conformance gate must fail (or error) on it with
a failing check that matches ``checks``, in a case whose tags match ``tags``.
``tests/test_broken_catalog.py`` runs the gate on every entry and holds it to that.

Importing this module imports no framework: ``BROKEN`` is a tuple of registry entries.
"""

from __future__ import annotations

import dataclasses

from attnsuite.impls.entry import Entry


CATEGORIES = {
    "tutorial": "a bug of the classic tutorial TensorFlow layer",
    "gradient": "only the gradients show it",
    "case": "only some cases show it",
    "layout": "head and scale bookkeeping",
    "state": "hidden state between calls",
    "precision": "part of the work done in the wrong dtype",
    "form": "only a call form, a head grouping, a mask layout or a length reveals it",
    "contract": "the calling contract broken: arguments changed in place, the wrong output",
    "rope": "rotary positions: the pairs' layout, the positions, the angles' precision",
    "cache": "decoding with a cache: what it keeps, and where the new tokens sit",
}


@dataclasses.dataclass(frozen=True)
class Expect:
    """What the gate must report for one broken implementation.

    checks: fnmatch patterns over check names ("output", "grad.*", "stateless", ...); some
        failing (or erroring) result must match one of them.
    tags: fnmatch patterns over case tags; that failing result's case must match each,
        for a bug that only some cases can show.
    only_in: where the bug lies only in some cases, the truth that every failing result
        carries one of these tags (empty: no claim).
    forward_clean: the bug is invisible in the forward pass: every "output" check passes.
    strict: needs the strict rule for rows with no visible key (SPEC 3), outside which
        what such rows do is reported as a behaviour, not judged.
    diagnosis: the id of the bug hypothesis (attnsuite.conformance.hypotheses) the
        diagnosis must rank first; None where the bug is in no hypothesis, and the
        diagnosis must say that no hypothesis explains it.
    """
    category: str
    checks: tuple[str, ...]
    reason: str
    tags: tuple[str, ...] = ()
    only_in: tuple[str, ...] = ()
    forward_clean: bool = False
    strict: bool = False
    diagnosis: str | None = None


# Every case with a mask (an all-True one too: adding −1e9 to every logit swamps them).
MASKED = ("mask_all_visible", "mask_random", "mask_key_padding", "mask_2d", "mask_batch",
          "mask_head", "mask_fully_masked_rows")
OUTPUT, GRADS, ANY_NUMERIC = ("output",), ("grad.*",), ("output", "grad.*")


def _rows():
    """(framework, factory, what is wrong, Expect), one per bug."""
    tf, torch, jax = "tensorflow", "torch", "jax"
    return [
        # The classic tutorial layer, one bug at a time.
        (tf, "output_p_times_v_transposed", "output written as P·Vᵀ",
         Expect("tutorial", ANY_NUMERIC, "P·Vᵀ is the wrong product: a shape error, or wrong "
                "values where L_k == d_v", diagnosis="output_p_times_v_transposed")),
        (tf, "own_position_excluded", "each query's own key position excluded",
         Expect("tutorial", OUTPUT, "every row loses the weight of key j == i",
                diagnosis="own_position_excluded")),
        (tf, "projections_sized_d_k", "projections sized d_k, heads split as num_heads·d_k",
         Expect("tutorial", ANY_NUMERIC, "the reshape folds the sequence into heads: a shape "
                "error or garbage")),
        (tf, "heads_merged_without_batch", "heads merged into (B·L_q, H·d_v), dropping the batch",
         Expect("tutorial", OUTPUT, "the output has shape (B·L_q, E_o)")),
        (tf, "dropout_at_inference", "dropout applied in inference mode",
         Expect("tutorial", OUTPUT, "a spec with dropout > 0 judged in inference mode drops weights",
                tags=("dropout",), only_in=("dropout",))),
        (tf, "mask_polarity_inverted", "mask added as mask·(−1e9): True drops the key",
         Expect("tutorial", OUTPUT, "the keys a True mask keeps get −1e9", tags=("mask_random",),
                only_in=MASKED, diagnosis="mask_inverted")),
        (tf, "scale_as_float32_tensor", "scale built as a float32 tensor",
         Expect("tutorial", ANY_NUMERIC, "TensorFlow refuses to multiply a float64, float16 or "
                "bfloat16 tensor by a float32 one", tags=("float64",),
                only_in=("float64", "float16", "bfloat16"))),
        # Only gradients can show these.
        (tf, "custom_gradient_forgets_scale", "tf.custom_gradient for scale·QKᵀ without the scale",
         Expect("gradient", GRADS, "dQ and dK are 1/scale times too large", forward_clean=True,
                diagnosis="grad_scale_forgotten")),
        (torch, "softmax_detached", "attention weights used through .detach()",
         Expect("gradient", GRADS, "no gradient reaches Q or K through the softmax",
                forward_clean=True, diagnosis="softmax_detached")),
        (torch, "softcap_backward_missing_square", "softcap backward with 1 − tanh, not 1 − tanh²",
         Expect("gradient", GRADS, "the softcap's derivative is wrong wherever tanh != 0",
                tags=("softcap",), only_in=("softcap",), forward_clean=True,
                diagnosis="softcap_grad_missing_square")),
        (jax, "softmax_vjp_diagonal_only", "jax.custom_vjp softmax with only p(1 − p) in its backward",
         Expect("gradient", GRADS, "the −p_i·p_j terms of the softmax Jacobian are missing",
                forward_clean=True, diagnosis="softmax_grad_diagonal_only")),
        (jax, "fully_masked_rows_nan_gradient", "additive −inf mask, NaN rows zeroed after the softmax",
         Expect("gradient", GRADS, "the forward is right, but the NaN of rows with no visible key "
                "reaches every gradient", tags=("fully_masked",), only_in=("fully_masked",),
                forward_clean=True, diagnosis="fully_masked_nan_gradients")),
        (torch, "softmax_where_nan_gradient", "additive −inf mask, empty rows zeroed by a where over e / total",
         Expect("gradient", GRADS, "the forward gives zeros on rows with no visible key, but the "
                "where's untaken 0/0 branch sends NaN into the gradients", tags=("fully_masked",),
                only_in=("fully_masked",), forward_clean=True, diagnosis="fully_masked_nan_gradients")),
        # Only some cases can show these.
        (torch, "gqa_heads_tiled", "grouped kv heads tiled instead of repeated",
         Expect("case", OUTPUT, "query head h reads kv head h % H_kv instead of h // group_size; "
                "MQA and MHA cannot tell the two apart", tags=("gqa",), only_in=("gqa",),
                diagnosis="gqa_heads_tiled")),
        (jax, "bottom_right_as_top_left", "causal rule always aligned top-left",
         Expect("case", OUTPUT, "bottom_right differs from top_left only when L_q != L_k",
                tags=("causal_bottom_right",), only_in=("causal_bottom_right",),
                diagnosis="causal_top_left")),
        (tf, "window_off_by_one", "sliding window's left edge written with >",
         Expect("case", OUTPUT, "key i − left is dropped", tags=("window",), only_in=("window",),
                diagnosis="window_left_one_short")),
        (torch, "mask_fill_leaks", "masked logits filled with a finite −15",
         Expect("case", OUTPUT, "masked keys keep a weight near e^−15: visible behind huge values",
                tags=("stress_masked_huge_values",), diagnosis="mask_fill_finite")),
        (tf, "softcap_after_mask", "softcap applied after the bias and the mask",
         Expect("case", OUTPUT, "the bias is capped too, and masked keys come back at −c",
                tags=("softcap",), only_in=("softcap",), diagnosis="softcap_after_bias_and_mask")),
        (jax, "softmax_without_max_subtraction", "softmax without subtracting the row max",
         Expect("case", OUTPUT, "exp overflows on logits past log(max finite)",
                tags=("stress_large_logits",), only_in=("stress_large_logits",),
                diagnosis="softmax_without_max_subtraction")),
        (jax, "custom_scale_ignored", "spec's custom scale ignored",
         Expect("case", OUTPUT, "only a case with a custom scale differs", tags=("custom_scale",),
                only_in=("custom_scale",), diagnosis="custom_scale_ignored")),
        (jax, "output_bias_dropped", "output projection's bias bo dropped",
         Expect("case", OUTPUT, "every output row is off by bo", tags=("proj_bias",),
                only_in=("proj_bias",), diagnosis="bo_dropped")),
        # Head and scale bookkeeping.
        (torch, "heads_merged_without_transpose", "heads merged by reshape without moving H back",
         Expect("layout", OUTPUT, "rows of different heads and positions are interleaved",
                diagnosis="heads_merged_without_transpose")),
        (torch, "scale_one_over_d_k", "logits scaled by 1/d_k",
         Expect("layout", OUTPUT, "1/d_k instead of 1/sqrt(d_k)", diagnosis="scale_d_k")),
        # Hidden state.
        (torch, "kv_cache_never_reset", "decoding KV cache appended to by every call",
         Expect("state", ("stateless", "deterministic"), "a second call attends to the first "
                "call's keys too", diagnosis="state_between_calls")),
        (torch, "kv_cache_keyed_on_shape", "projected K/V cached by input shape",
         Expect("state", ("stateless",), "a later call with new inputs of the same shapes gets "
                "the first call's K/V", diagnosis="state_between_calls")),
        # Precision.
        (tf, "softmax_in_float32", "softmax computed in float32 whatever the dtype",
         Expect("precision", OUTPUT, "float64 results carry float32 rounding (~1e-7)",
                tags=("float64",), only_in=("float64",), diagnosis="float32_in_float64")),
        (torch, "probs_in_half_precision", "attention weights stored in float16",
         Expect("precision", OUTPUT, "float32 results carry float16 rounding (~5e-4), and "
                "gradients behind huge values overflow float16's range", tags=("float32",),
                only_in=("float32", "float64", "stress_masked_huge_values"),
                diagnosis="float16_accumulation")),
        (jax, "softmax_sum_in_float16", "softmax denominator accumulated in float16",
         Expect("precision", OUTPUT, "float32 results carry float16 rounding of the row sums",
                tags=("float32",), only_in=("float32", "float64"),
                diagnosis="float16_accumulation")),
        # Only the paths that real layers take reveal these (call forms, pairwise cases).
        (torch, "self_attention_projects_keys_with_wq", "self form: keys projected with wq",
         Expect("form", ANY_NUMERIC, "only a call with one tensor as query, key and value takes "
                "the shortcut", tags=("form_self",), only_in=("form_self",))),
        (torch, "memory_projected_once_with_wk", "kv form: values projected with wk",
         Expect("form", ANY_NUMERIC, "only a call with one tensor as key and value takes the "
                "shortcut", tags=("form_kv",), only_in=("form_kv",))),
        (torch, "gqa_pairs_hard_coded", "grouped heads read kv head (h // 2) mod H_kv",
         Expect("form", OUTPUT, "right for groups of 2; a group of 3 or more with several kv "
                "heads reads the wrong head", tags=("gqa_group3plus",), only_in=("gqa_group3plus",))),
        (torch, "square_mask_read_as_key_by_query", "a square rank-2 mask transposed",
         Expect("form", OUTPUT, "only an asymmetric square (L, L) mask shows it",
                tags=("mask_2d",), only_in=("mask_2d",))),
        (torch, "last_partial_key_block_dropped", "keys past the last full block of 128 dropped",
         Expect("form", OUTPUT, "only more than 128 keys, not a multiple of 128, show it",
                tags=("long_keys",), only_in=("long_keys",))),
        # The calling contract.
        (torch, "mask_inverted_in_place", "the caller's mask inverted in place",
         Expect("contract", ("contract",), "the results are right, but the caller's mask is "
                "left inverted", only_in=("contract",), forward_clean=True)),
        (torch, "output_upcast_to_float64", "output returned as float64 whatever the dtype",
         Expect("contract", ("contract",), "the values are right, the dtype is not the inputs'",
                tags=("float32",), only_in=("contract",), forward_clean=True)),
        # Rotary positions: only a spec with RoPE shows these.
        (torch, "rope_style_swapped", "RoPE pairs taken in the other layout (half vs interleaved)",
         Expect("rope", OUTPUT, "features of different pairs are rotated together",
                tags=("rope",), only_in=("rope",), diagnosis="rope_style_swapped")),
        (torch, "rope_not_applied", "the spec's rotary positions never applied",
         Expect("rope", OUTPUT, "the scores carry no position at all", tags=("rope",),
                only_in=("rope",), diagnosis="rope_not_applied")),
        (torch, "rope_query_positions_from_one", "query positions counted from 1, keys' from 0",
         Expect("rope", OUTPUT, "every relative position is one too far (shifting both would "
                "change nothing)", tags=("rope",), only_in=("rope",),
                diagnosis="rope_positions_off_by_one")),
        (torch, "rope_angles_in_float16", "RoPE angles computed in float16",
         Expect("rope", OUTPUT, "position × frequency loses ~1e-3 rad past a few hundred "
                "positions; nearer ones stay within float32's bound", tags=("rope", "long_keys"),
                only_in=("rope",), diagnosis="rope_angles_float16")),
        # Decoding with a cache: only the decode check, step by step, shows these.
        (torch, "decode_query_positions_not_offset", "decoded queries rotated at 0..n−1",
         Expect("cache", ("decode",), "each step's queries sit at the start of the sequence, "
                "not after the cached tokens; the full pass is right", tags=("rope",),
                only_in=("rope",), forward_clean=True, diagnosis="decode_positions_not_offset")),
        (torch, "decode_cache_ring_of_eight", "a cache of 8 slots overwriting the oldest entry",
         Expect("cache", ("decode",), "from the 9th token on, token 0 is lost (unless a window "
                "hides it anyway)", tags=("decode",), only_in=("decode",), forward_clean=True,
                diagnosis="decode_cache_drops_oldest")),
        (torch, "decode_window_ignored", "the decoding mask without the sliding window",
         Expect("cache", ("decode",), "decoded steps see keys past the window; the full pass "
                "applies it", tags=("window",), only_in=("window",), forward_clean=True,
                diagnosis="decode_window_ignored")),
        (torch, "decode_cache_never_reset", "init_cache hands back the last sequence's cache",
         Expect("cache", ("decode",), "the second sequence attends to the first one's keys",
                tags=("decode",), only_in=("decode",), forward_clean=True,
                diagnosis="decode_cache_kept_across_sequences")),
    ]


def _catalog() -> tuple[tuple[Entry, ...], dict[str, Expect]]:
    entries, caught_by = [], {}
    for framework, factory, what, expect in _rows():
        name = f"broken.{framework}.{factory}"
        entries.append(Entry(name, framework, f"attnsuite.impls.broken.{framework}:{factory}",
                             f"broken: {what}", kind="broken"))
        caught_by[name] = expect
    return tuple(entries), caught_by


BROKEN, CAUGHT_BY = _catalog()
