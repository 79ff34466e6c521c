"""``attnsuite port``: check a port of one attention layer with the checkpoint you have.

    attnsuite port CHECKPOINT --source IMPL --target IMPL [--target IMPL ...]
                   [--layout L] [--prefix P | --layer N] [--spec JSON|FILE]
                   [--target-style half|interleaved] [--ported CHECKPOINT [--ported-layout L]
                   [--ported-prefix P]] [--profile quick|default|full] [--dtype D[,D]]
                   [--case ID] [--seed N] [--device cpu|gpu] [--report DIR]
                   [--junit-xml FILE] [--timeout SECONDS] [--no-diagnose] [--traceback] [-q]

CHECKPOINT is a PyTorch state_dict (.pt/.pth/.bin), .safetensors, a Keras .weights.h5, flax
msgpack params, a canonical .npz, or an HF checkpoint folder (config.json gives the spec;
--layer N picks model.layers.N.self_attn.), or Meta's consolidated.*.pth (params.json
beside it gives the spec). --layout names the keys (hf-llama, meta-llama,
hf-bert, torch-mha, keras, flax, canonical; hf-llama for an HF folder, meta-llama beside a
params.json, else guessed from the keys when left out); a layout
with RoPE fixes the style of its wq/wk (meta-llama: interleaved, hf-llama: half). The spec
comes from config.json or params.json, else from --spec (JSON, or a file of it: the fields of
AttentionSpec; sizes it leaves out are read off the weights).

The source implementation runs on the checkpoint's weights; the targets on the same
weights converted by the suite (--target-style: into the other RoPE layout, wq/wk
permuted), or on your own converted checkpoint (--ported). Each is judged against the
float64 oracle on the profile's cases that fit the layer (self-attention calls, in the
checkpoint's dtype unless --dtype), and each target against the source on the same inputs.
A target that disagrees is recomputed with wq/wk permuted and with the RoPE style swapped:
the verdict says which explains it.

Exit status: 0 when the source and every target pass and agree, 1 when any fails or
disagrees, 2 for a usage error (an unreadable checkpoint, a missing key, a shape that does
not fit, an unknown layout or implementation), found before anything runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from attnsuite import sanitize
from attnsuite.conformance import agreement, checkpoints, layouts
from attnsuite.conformance.agreement import Side
from attnsuite.conformance.cases import DTYPES, NUMERIC, PROFILES, Case
from attnsuite.conformance.cli import (_Parser, _seconds, print_and_write, _UsageError, _dtypes,
                                       check_output_file)
from attnsuite.conformance.pool import DEFAULT_TIMEOUT
from attnsuite.conformance.results import ImplResult, RunResult
from attnsuite.conformance.weights import (SPEC_KEY, _check_finite, _spec_fields, infer_spec,
                                           load_weights, save_weights)
from attnsuite.impls.convert.rope import half_to_interleaved, interleaved_to_half
from attnsuite.impls.registry import find_entry
from attnsuite.impls.spec import ROPE_STYLES
from attnsuite.impls.weights import check_weights
from attnsuite.options import int_in
from attnsuite.processes import exit_status, interrupt_on_sigterm

PROG = "attnsuite port"
SIZES = ("E", "E_k", "E_v", "E_o")      # the sizes both sides of a port must share
# Layouts guessed from a key under the prefix, in this order.
GUESS = (("q_proj.weight", "hf-llama"), ("wq.weight", "meta-llama"), ("self.query.weight", "hf-bert"),
         ("in_proj_weight", "torch-mha"), ("q_proj_weight", "torch-mha"), ("query_dense/vars/0", "keras"), ("query/kernel", "flax"),
         ("wq", "canonical"))


def build_parser() -> _Parser:
    paragraphs = __doc__.strip().split("\n\n")
    p = _Parser(prog=PROG, description=paragraphs[0].split(":", 1)[1].strip(),
                epilog="\n\n".join(paragraphs[2:]),
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint file or HF folder")
    p.add_argument("--source", required=True, metavar="IMPL",
                   help="the implementation the checkpoint comes from (a registered name or "
                        "FRAMEWORK:module.path:factory)")
    p.add_argument("--target", required=True, action="append", metavar="IMPL",
                   help="an implementation it is ported to; repeatable")
    p.add_argument("--layout", choices=layouts.LAYOUTS, help="the checkpoint's key layout")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--prefix", help="key prefix of the layer, e.g. model.layers.0.self_attn.")
    where.add_argument("--layer", type=int_in(0), metavar="N",
                       help="the layer's number, for layouts with a standard prefix")
    p.add_argument("--spec", metavar="JSON|FILE", help="AttentionSpec fields (JSON, or a file of it)")
    p.add_argument("--target-style", choices=ROPE_STYLES,
                   help="run the targets with this RoPE style, wq/wk permuted to it")
    p.add_argument("--ported", metavar="CHECKPOINT",
                   help="your ported checkpoint: the targets run on its weights")
    p.add_argument("--ported-layout", choices=layouts.LAYOUTS, help="--ported's key layout")
    p.add_argument("--ported-prefix", help="--ported's key prefix (default: --layer's, or none)")
    p.add_argument("--profile", choices=PROFILES, default="quick")
    p.add_argument("--dtype", type=_dtypes, action="append", metavar="D[,D]",
                   help=f"these dtypes ({', '.join(DTYPES)}); default: the checkpoint's")
    p.add_argument("--case", action="append", metavar="ID", help="only this case (fnmatch pattern)")
    p.add_argument("--seed", type=int_in(0, 2**32), default=0)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--report", metavar="DIR", help="write DIR/conformance.json, .md and .html "
                   "(and the canonical weights each side ran on)")
    p.add_argument("--junit-xml", metavar="FILE", help="write JUnit XML")
    p.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS")
    p.add_argument("--no-diagnose", action="store_true")
    p.add_argument("--traceback", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


# ---------------------------------------------------------------------------------------
# Reading a side.

def _spec_text(text: str | None) -> dict:
    if text is None:
        return {}
    path = Path(text)
    if not text.lstrip().startswith("{") and path.is_file():
        text = path.read_text()
    try:
        json.loads(text)
        return _spec_fields(text)
    except json.JSONDecodeError as exc:
        raise _UsageError(f"--spec: neither JSON nor a file of it: {exc}") from None
    except ValueError as exc:
        raise _UsageError(f"--spec: {exc}") from None


def _guess_layout(layer_keys, where: str) -> layouts.Layout:
    for key, name in GUESS:
        if key in layer_keys:
            return layouts.LAYOUTS[name]
    raise _UsageError(f"{where}: cannot tell the key layout (keys {sorted(layer_keys)[:4]}); "
                      f"give --layout (one of {', '.join(layouts.LAYOUTS)})")


def _dtype(layer: dict) -> str:
    names = {str(np.asarray(v).dtype) for v in layer.values()}
    return next((d for d in DTYPES if d in names), "float32")


def read_side(path: str, layout_name: str | None, prefix: str | None, layer_number: int | None,
              spec_fields: dict, option: str, inherited: dict | None = None) -> tuple[Side, str]:
    """(the side's canonical spec and weights, the stored dtype); ValueError naming the file,
    key or field that is wrong. The spec's fields: ``inherited``, then the checkpoint's own
    (an HF folder's config.json, the params.json beside a Meta checkpoint, a --weights file's
    spec), then ``spec_fields`` (--spec); a layout with a RoPE layout sets rope.style."""
    folder = Path(path).is_dir()
    if layout_name is None and folder:
        layout_name = "hf-llama"
    elif layout_name is None and checkpoints.has_meta_params(path):
        layout_name = "meta-llama"
    layout = layouts.LAYOUTS[layout_name] if layout_name else None
    if prefix is None and layer_number is not None:
        if layout is None:
            raise ValueError(f"--layer: give --layout (or --prefix) for {path}")
        prefix = layouts.layer_prefix(layout, layer_number)
    if prefix is None and folder:
        raise ValueError(f"{path}: an HF folder holds every layer: give --layer N or --prefix")
    prefix = prefix or ""
    tensors = checkpoints.read_tensors(path, prefix)
    own = tensors.pop(SPEC_KEY, None) if not folder else None      # a --weights file's spec
    layer = layouts.layer_tensors(tensors, prefix, path)
    layout = (layout or _guess_layout(layer, path)).for_layer(layer)
    fields = dict(inherited or {})
    if folder and layout.name == "hf-llama":     # another layout's config is the user's --spec
        fields.update(checkpoints.hf_spec_fields(path))
    elif layout.name == "meta-llama":
        fields.update(checkpoints.meta_spec_fields(path))
    elif own is not None:
        try:
            fields.update(_spec_fields(str(own)))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    fields.update(spec_fields)
    layouts.check_weights_present(layout, layer, prefix, path)
    shapes = layouts.canonical_shapes(layout, layer)
    if "num_heads" not in fields and layout.name in ("keras", "flax") and layout.key("wq") in layer:
        fields["num_heads"] = int(np.shape(layer[layout.key("wq")])[1])
    if layout.rope_style and isinstance(fields.get("rope"), dict):   # HF's rotate halves, Meta's pairs
        fields["rope"] = {**fields["rope"], "style": layout.rope_style}
    if "num_heads" not in fields:
        raise ValueError(f"{option}: num_heads is not in the checkpoint: give --spec "
                         f"'{{\"num_heads\": H, ...}}' (or an HF folder's config.json, a Meta "
                         f"params.json)")
    try:
        spec = infer_spec(fields, shapes)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc} (layout {layout.name}, prefix {prefix!r})") from None
    layouts.check_self_attention(layout, spec, layer, prefix, path)
    weights = layouts.to_canonical(layout, spec, layer, prefix, path)
    try:
        check_weights(spec, weights)
        _check_finite(weights)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc} (layout {layout.name}, prefix {prefix!r})") from None
    return Side(spec, weights, f"{path} [{layout.name}, prefix {prefix!r}]"), _dtype(layer)


def restyled(side: Side, style: str) -> Side:
    """The same layer with RoPE in ``style``: wq/wk permuted (impls/convert/rope.py)."""
    spec = side.spec
    if spec.rope is None:
        raise ValueError(f"--target-style: {side.where} has no RoPE (the spec's rope is None)")
    if spec.rope.style == style:
        return side
    permute = interleaved_to_half if style == "half" else half_to_interleaved
    new_spec = spec.replace(rope=dict(spec.rope.to_dict(), style=style))
    return Side(new_spec, permute(side.weights, spec), f"{side.where} -> {permute.__name__}")


def _check_sizes(source: Side, target: Side) -> None:
    for size in SIZES:
        a, b = getattr(source.spec, size), getattr(target.spec, size)
        if a != b:
            raise ValueError(f"--ported {target.where}: {size}={b}, the source's is {a}: the two "
                             f"layers do not take the same inputs")


# ---------------------------------------------------------------------------------------
# The cases and the runs.

def port_cases(spec, profile: str, dtypes, case_filter, seed: int) -> list[Case]:
    """The profile's cases on the checkpoint's spec (as ``check --weights`` picks them),
    each as a self-attention call unless the layer is a cross-attention one: every
    implementation of the port then gets the very same inputs."""
    from attnsuite.conformance.runner import select_cases

    chosen: dict[str, Case] = {}
    for case in select_cases(profile, dtypes, case_filter, seed, spec):
        moved = case if spec.is_cross else case.in_form("self", seed)
        chosen.setdefault(moved.id, moved)
    return list(chosen.values())


def _saved(side: Side, folder: Path, name: str) -> tuple[Path, Side]:
    """The side's weights as a ``--weights`` file, and the side as the gate reads it back."""
    path = folder / f"{name}.npz"
    save_weights(path, side.spec, side.weights)
    spec, weights = load_weights(path)
    return path, Side(spec, weights, side.where)


def _outputs(folder: Path, name: str, case: Case):
    from attnsuite.conformance.judging import output_file

    path = Path(output_file(folder, name, case.id))
    return np.load(path) if path.is_file() else None


def _agreement(source_name: str, target_name: str, pairs, target: Side, outputs: Path,
               diagnose: bool) -> ImplResult:
    entry = find_entry(target_name)
    result = ImplResult(f"port: {source_name} -> {target_name}", entry.framework, "port")
    failing = []
    for source_case, target_case in pairs:
        if source_case.checks != NUMERIC:
            continue
        source_out = _outputs(outputs, source_name, source_case)
        target_out = _outputs(outputs, target_name, target_case)
        check = agreement.compare_case(source_case, target_case, target, source_out, target_out,
                                       source_name, target_name)
        result.results.append(check)
        if check.status == "fail":
            failing.append((target_case, source_out, target_out))
    if failing and diagnose:
        result.diagnosis = agreement.diagnose(failing, target)
    result.finish()
    return result


def _merged(runs: list[RunResult], extra: list[ImplResult], sides: dict) -> RunResult:
    first = runs[0]
    cases = list({c.id: c for run in runs for c in run.cases}.values())
    environment = dict(first.environment, cases=len(cases), port=sides)
    interrupted = next((r.interrupted for r in runs if r.interrupted), None)
    return RunResult([i for r in runs for i in r.implementations] + extra, cases, environment,
                     [w for r in runs for w in r.warnings], interrupted)


def run_port(source_name: str, targets: list[str], source: Side, target: Side, cases, folder: Path,
             *, device: str = "cpu", timeout: float = DEFAULT_TIMEOUT, diagnose: bool = True,
             isolate: bool = True, seed: int = 0) -> RunResult:
    """Judge the source on ``source``'s weights and the targets on ``target``'s, on
    ``cases``; each target's outputs compared with the source's. ``folder`` keeps the
    canonical weights and the outputs."""
    from attnsuite.conformance.runner import check

    outputs = folder / "outputs"
    outputs.mkdir(exist_ok=True)
    for stale in outputs.glob("*.npy"):     # of a run into the same --report folder that was killed
        stale.unlink()
    source_path, source = _saved(source, folder, "source-weights")
    same = target.spec == source.spec and all(np.array_equal(target.weights[n], source.weights[n])
                                              for n in source.weights)
    target_path, target = (source_path, source) if same else _saved(target, folder, "target-weights")
    source_cases = list(cases)
    # The same seeds, so the same inputs; the dropout probe keeps its own spec.
    target_cases = [c.replace(spec=target.spec) if c.spec == source.spec else c for c in cases]
    common = dict(device=device, isolate=isolate, timeout=timeout, diagnose=diagnose,
                  outputs_dir=outputs, seed=seed)
    if same:
        runs = [check([source_name, *targets], weights_path=source_path, cases=source_cases, **common)]
    else:
        runs = [check([source_name], weights_path=source_path, cases=source_cases, **common)]
        if not runs[0].interrupted:
            runs.append(check(targets, weights_path=target_path, cases=target_cases, **common))
    pairs = list(zip(source_cases, target_cases))
    compared = [_agreement(source_name, name, pairs, target, outputs, diagnose) for name in targets]
    sides = {"source": {"implementation": source_name, "weights": source.where,
                        "spec": source.spec.to_dict(), "weights_file": str(source_path)},
             "targets": targets, "target": {"weights": target.where, "spec": target.spec.to_dict(),
                                            "weights_file": str(target_path)}}
    return _merged(runs, compared, sides)


# ---------------------------------------------------------------------------------------
# The command.

def _sides(args) -> tuple[Side, Side, str]:
    fields = _spec_text(args.spec)
    source, dtype = read_side(args.checkpoint, args.layout, args.prefix, args.layer, fields,
                              "CHECKPOINT")
    if args.ported:
        prefix = args.ported_prefix
        target, _ = read_side(args.ported, args.ported_layout, prefix,
                              args.layer if prefix is None else None, fields, "--ported",
                              inherited=source.spec.to_dict())
        _check_sizes(source, target)
    else:
        target = source
    if args.target_style:
        target = restyled(target, args.target_style)
    return source, target, dtype


def _verdict(run: RunResult, source_name: str, targets: list[str]) -> str:
    compared = [i for i in run.implementations if i.kind == "port"]
    judged = sum(1 for i in compared for r in i.results if r.status != "unsupported")
    diffs = [r.detail.get("max_abs_diff") for i in compared for r in i.results
             if r.detail.get("max_abs_diff") is not None]
    worst = f", max |diff| {max(diffs):.3g}" if diffs else ""
    if run.ok:
        return (f"PORT OK: {source_name} -> {', '.join(targets)}: every side passes the oracle "
                f"and each target agrees with the source (outputs compared on {judged} "
                f"case{'s' if judged != 1 else ''}{worst})")
    failing = [i.name for i in run.implementations if i.verdict != "pass"]
    causes: dict[str, list[str]] = {}     # each cause once, with the targets it explains
    for i in compared:
        if i.verdict == "fail" and i.diagnosis:
            causes.setdefault(i.diagnosis[0]["explanation"], []).append(i.name.rpartition(" -> ")[2])
    if sum(map(len, causes.values())) == 1:
        return f"PORT FAILS: {', '.join(failing)}: {next(iter(causes))}"
    because = "".join(f"; {', '.join(targets)}: {cause}" for cause, targets in causes.items())
    return f"PORT FAILS: {', '.join(failing)}{because}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    from attnsuite.conformance import report

    lock = None
    try:
        args = parser.parse_args(argv)
        for name in [args.source, *args.target]:
            find_entry(name)
        if args.junit_xml:
            check_output_file("--junit-xml", args.junit_xml)
        source, target, stored_dtype = _sides(args)
        dtypes = [d for group in args.dtype for d in group] if args.dtype else [stored_dtype]
        cases = port_cases(source.spec, args.profile, dtypes, args.case, args.seed)
        if args.report:
            if Path(args.report).exists() and not Path(args.report).is_dir():
                raise _UsageError(f"--report {args.report}: is a file, a directory is wanted")
            lock = report.ReportLock(args.report).acquire()
    except (_UsageError, ValueError, OSError, report.ReportBusy) as exc:
        print(f"{PROG}: error: {sanitize.terminal(str(exc))}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        return _run(args, source, target, cases)
    finally:
        if lock is not None:
            lock.release()


def _run(args, source: Side, target: Side, cases) -> int:
    if not args.quiet:
        print(f"source: {args.source} on {source.where}: {source.spec}")
        if target is not source:
            print(f"target: {target.where}: {target.spec}")
        print(f"{len(cases)} cases, profile {args.profile}")
    with tempfile.TemporaryDirectory(prefix="attnsuite-port-") as scratch:
        folder = Path(args.report) if args.report else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with interrupt_on_sigterm():
                run = run_port(args.source, args.target, source, target, cases, folder,
                               device=args.device, timeout=args.timeout, diagnose=not args.no_diagnose,
                               seed=args.seed)
        except ValueError as exc:
            print(f"{PROG}: error: {sanitize.terminal(str(exc))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return exit_status(exc)
        finally:
            if args.report:   # the outputs were the comparison's; the weights stay beside the report
                for path in (folder / "outputs").glob("*.npy"):
                    path.unlink()
                if (folder / "outputs").is_dir():
                    (folder / "outputs").rmdir()
    print_and_write(run, PROG, args)
    print(_verdict(run, args.source, args.target))
    return run.exit_code
