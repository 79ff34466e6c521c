"""What every adapter does the same way, given its own ``tensor`` function."""

from __future__ import annotations


from attnsuite.impls.calling import FORM_INPUTS

# XLA's CPU compile options for the gate's programs, each small and run once or twice, so
# that compiling is nearly all they cost: LLVM at -O0 and XLA's older fusion code generator
# cut that fourfold, and one LLVM module instead of parts compiled on a thread pool halves
# what is left (the parts' threads only contend with the run's other workers). The
# optimised HLO is the same; results differ from a default build's by a rounding at most,
# and no verdict of the default profile changes. The JAX adapter compiles with them
# (``compiler_options``); the gate's JAX workers get them as XLA_FLAGS unless the user set
# XLA_FLAGS (``conformance.pool``). Imports no framework.
QUICK_XLA_CPU_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False,
                         "xla_cpu_parallel_codegen_split_count": 1}


def xla_flags(options: dict) -> str:
    """``options`` as XLA_FLAGS: "--name=value" each, booleans lower case."""
    return " ".join(f"--{name}={str(value).lower() if isinstance(value, bool) else value}"
                    for name, value in options.items())


def convert_inputs(tensor, query, key, value, mask, bias, dtype, device, form):
    """NumPy query/key/value/mask/bias -> framework tensors, in the call form: "self" passes
    one tensor three times and "kv" one tensor as key and value, so that its gradient is the
    total of its uses."""
    q = tensor(query, dtype, device)
    if form == "self":
        k = v = q
    elif form == "kv":
        k = v = tensor(key, dtype, device)
    else:
        k, v = tensor(key, dtype, device), tensor(value, dtype, device)
    m = None if mask is None else tensor(mask, dtype, device)
    b = None if bias is None else tensor(bias, dtype, device)
    return q, k, v, m, b


def differentiable_inputs(form: str, q, k, v) -> dict:
    """The distinct input tensors of a call in ``form``, by gradient name."""
    return dict(zip(FORM_INPUTS[form], (q, k, v)))
