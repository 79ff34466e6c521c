"""Case ids read back into cases: any id the suite prints reproduces its case.

A case id spells everything that makes the case (``Case._make_id``): the spec's tokens,
the shapes, the mask, bias and stress kinds, the call form, a behaviour check, the dtype,
and for a generated case its seed. ``parse_case_id`` is the inverse, so ``--case ID``
works for a case of any profile, for one moved into a call form, and for a generated one
(whose id carries its seed), without looking it up in a catalog.
"""

from __future__ import annotations

import re

from attnsuite.impls.spec import AttentionSpec

_LAYOUT = re.compile(r"^(?:(h1)|mqa(\d+)|gqa(\d+)_(\d+)|mha(\d+))$")
_SPEC_FIELDS = [  # token pattern -> how it sets the spec's fields
    (re.compile(r"^dk(\d+)$"), lambda m: {"head_dim": int(m[1])}),
    (re.compile(r"^dv(\d+)$"), lambda m: {"value_head_dim": int(m[1])}),
    (re.compile(r"^kdim(\d+)$"), lambda m: {"kdim": int(m[1])}),
    (re.compile(r"^vdim(\d+)$"), lambda m: {"vdim": int(m[1])}),
    (re.compile(r"^out(\d+)$"), lambda m: {"out_dim": int(m[1])}),
    (re.compile(r"^nobias$"), lambda m: {"bias": False}),
    (re.compile(r"^scale(.+)$"), lambda m: {"scale": float(m[1])}),
    (re.compile(r"^causal_(tl|br)$"), lambda m: {"causal": {"tl": "top_left", "br": "bottom_right"}[m[1]]}),
    (re.compile(r"^win(\d+)_(\d+)$"), lambda m: {"window": (int(m[1]), int(m[2]))}),
    (re.compile(r"^softcap(.+)$"), lambda m: {"softcap": float(m[1])}),
    (re.compile(r"^dropout(.+)$"), lambda m: {"dropout": float(m[1])}),
    (re.compile(r"^rope_(half|interleaved)([0-9.e+]*)(?:_r(\d+))?$"),
     lambda m: {"rope": {"style": m[1], **({"theta": float(m[2])} if m[2] else {}),
                         **({"rotary_dim": int(m[3])} if m[3] else {})}}),
]


def _tokens(case_id: str) -> list[str]:
    """The id's "-"-separated tokens, with a number's exponent ("1e-05") kept whole."""
    tokens: list[str] = []
    for part in case_id.split("-"):
        if tokens and re.search(r"\de$", tokens[-1]) and re.fullmatch(r"\d+", part):
            tokens[-1] += "-" + part
        else:
            tokens.append(part)
    return tokens


def parse_case_id(case_id: str, kinds: dict) -> dict:
    """The Case fields an id spells. ``kinds``: the token vocabularies (mask, bias, stress,
    forms, checks, dtypes) from conformance.cases. ValueError naming the token it cannot read."""
    tokens = _tokens(case_id)
    fields: dict = {"generated": bool(tokens) and tokens[0] == "gen"}
    tokens = tokens[1:] if fields["generated"] else tokens

    def fail(token: str, what: str):
        raise ValueError(f"case id {case_id!r}: {what} (at {token!r})")

    if len(tokens) < 2:
        fail(case_id, "too short to be a case id")
    layout, width = _LAYOUT.match(tokens[0]), re.fullmatch(r"E(\d+)", tokens[1])
    if not layout or not width:
        fail(tokens[0], "expected the head layout and E<d_model> first")
    h1, mqa, gqa_h, gqa_kv, mha = layout.groups()
    heads = 1 if h1 else int(mqa or gqa_h or mha)
    kv_heads = 1 if (h1 or mqa) else int(gqa_kv) if gqa_kv else None
    spec: dict = {"d_model": int(width[1]), "num_heads": heads,
                  "num_kv_heads": kv_heads if kv_heads not in (None, heads) else None}
    rest = tokens[2:]
    while rest and not re.fullmatch(r"B\d+", rest[0]):
        token = rest.pop(0)
        for pattern, setter in _SPEC_FIELDS:
            if match := pattern.match(token):
                spec.update(setter(match))
                break
        else:
            fail(token, "not a spec token")
    if len(rest) < 3 or not all(re.fullmatch(p + r"\d+", t) for p, t in zip(("B", "Lq", "Lk"), rest)):
        fail(" ".join(rest[:3]), "expected B<batch>-Lq<length>-Lk<length> after the spec")
    fields.update(spec=AttentionSpec(**spec), B=int(rest[0][1:]), L_q=int(rest[1][2:]),
                  L_k=int(rest[2][2:]))
    for token in rest[3:]:
        prefix, _, kind = token.partition("_")
        if prefix in ("mask", "bias", "stress") and kind in kinds[prefix]:
            fields[prefix] = kind
        elif token in kinds["forms"]:
            fields["form"] = token
        elif token in kinds["checks"]:
            fields["checks"] = (token,)
        elif token in kinds["dtypes"]:
            fields["dtype"] = token
        elif fields["generated"] and re.fullmatch(r"seed\d+", token):
            fields["seed"] = int(token[4:])
        else:
            fail(token, "not a mask, bias, stress, form, check, dtype or seed token")
    if "dtype" not in fields:
        fail(case_id, "no dtype")
    if fields["generated"] and "seed" not in fields:
        fail(case_id, "a generated case's id ends in seed<N>")
    return fields
