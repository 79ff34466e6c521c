"""What to measure: one ``Config`` per shape, and the named sweeps of them.

A sweep is a list of configurations plus the timing budget each point gets. ``quick``
is sized so that every installed implementation runs in about a minute on a 2-core
CPU; ``default`` is a real CPU study; ``long`` pushes sequence lengths to 4096 on a CPU
and to 32k on a GPU (the explicit implementations run out of memory or budget there,
and are recorded as such).

The ``gpu-*`` sweeps are the GPU study (run on ``--device gpu`` only), in bfloat16 at
model width 2048:

- ``gpu-core``: attention cores alone (``attnsuite.impls.kernels``), batch 4, head size 64
  (32 heads) and 128 (16 heads), causal and not, lengths 1k to 16k: is our fused core as
  fast as the fastest kernel of its framework?
- ``gpu-layer``: whole layers, projections included, batch 4, 16 heads, lengths 4k and
  8k: where do our layers sit among the built-in ones?
- ``gpu-memory``: batch 1, 16 heads, lengths 4k to 32k, with the compiled program's
  memory where the framework has one: does memory grow linearly with length?
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from attnsuite.impls.spec import AttentionSpec

SWEEPS = ("quick", "default", "long", "gpu-core", "gpu-layer", "gpu-memory")
GPU_SWEEPS = ("gpu-core", "gpu-layer", "gpu-memory")
# How each framework is run: eager (no compilation), jit (the framework's standard
# compiler: torch.compile, tf.function, jax.jit) or xla (tf.function(jit_compile=True)).
# "natural" picks what a user of that framework runs by default.
COMPILE_MODES = ("eager", "jit", "xla")
FRAMEWORK_COMPILE = {"numpy": ("eager",), "torch": ("eager", "jit"),
                     "tensorflow": ("eager", "jit", "xla"), "jax": ("eager", "jit")}
NATURAL_COMPILE = {"numpy": "eager", "torch": "eager", "tensorflow": "jit", "jax": "jit"}


def compile_modes(framework: str, requested: list[str]) -> list[str]:
    """The modes of ``requested`` ("natural", "all" or mode names) that ``framework`` has."""
    modes = []
    for mode in requested:
        if mode == "natural":
            modes.append(NATURAL_COMPILE[framework])
        elif mode == "all":
            modes.extend(FRAMEWORK_COMPILE[framework])
        elif mode not in COMPILE_MODES:
            raise ValueError(f"compile: expected natural, all or one of {COMPILE_MODES}, got {mode!r}")
        elif mode in FRAMEWORK_COMPILE[framework]:
            modes.append(mode)
    return list(dict.fromkeys(modes))


@dataclasses.dataclass(frozen=True)
class Config:
    batch: int
    L_q: int
    L_k: int
    d_model: int
    heads: int
    kv_heads: int
    dtype: str
    causal: bool
    device: str

    @property
    def self_attention(self) -> bool:
        """Equal lengths are benchmarked as self-attention (one tensor passed three times)."""
        return self.L_q == self.L_k

    def spec(self) -> AttentionSpec:
        return AttentionSpec(d_model=self.d_model, num_heads=self.heads, num_kv_heads=self.kv_heads,
                             causal="top_left" if self.causal else None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})

    def label(self) -> str:
        kv = f"/{self.kv_heads}kv" if self.kv_heads != self.heads else ""
        length = f"L={self.L_q}" if self.self_attention else f"Lq={self.L_q},Lk={self.L_k}"
        return (f"B={self.batch} {length} E={self.d_model} H={self.heads}{kv} {self.dtype}"
                f"{' causal' if self.causal else ''} {self.device}")


@dataclasses.dataclass(frozen=True)
class Budget:
    """Timing limits for each point (seconds)."""

    max_time: float          # measuring one pass, once calibrated
    min_runs: int
    point_timeout: float     # a worker silent this long on one point is killed
    min_block_time: float = 2e-3
    compiled_memory: bool = False  # also ask the framework for the compiled program's memory


def _grid(lengths, *, batch, d_model, heads, kv_heads, dtypes, causal, device):
    return [Config(batch, L, L, d_model, heads, kv, dtype, c, device)
            for dtype, kv, c, L in itertools.product(dtypes, kv_heads, causal, lengths)]


def sweep(name: str, device: str = "cpu", dtypes: list[str] | None = None) -> tuple[list[Config], Budget]:
    """The configurations and budget of sweep ``name`` on ``device``."""
    gpu = device == "gpu"
    if name == "quick":
        configs = _grid([128, 512], batch=1, d_model=256, heads=4, kv_heads=[4],
                        dtypes=dtypes or ["float32"], causal=[False], device=device)
        return configs, Budget(max_time=0.1, min_runs=5, point_timeout=120)
    if name == "default":
        lengths = [128, 256, 512, 1024, 2048] + ([4096, 8192] if gpu else [])
        configs = _grid(lengths, batch=2 if gpu else 1, d_model=512, heads=8, kv_heads=[8, 2],
                        dtypes=dtypes or (["float32", "bfloat16"] if gpu else ["float32"]),
                        causal=[False, True], device=device)
        return configs, Budget(max_time=0.5, min_runs=5, point_timeout=300)
    if name == "long":
        lengths = ([512, 1024, 2048, 4096, 8192, 16384, 32768, 65536] if gpu
                   else [256, 512, 1024, 2048, 4096])
        configs = _grid(lengths, batch=1, d_model=1024 if gpu else 512, heads=16 if gpu else 8,
                        kv_heads=[16 if gpu else 8], dtypes=dtypes or (["bfloat16"] if gpu else ["float32"]),
                        causal=[False, True], device=device)
        return configs, Budget(max_time=1.0, min_runs=5, point_timeout=600)
    if name in GPU_SWEEPS:
        if not gpu:
            raise ValueError(f"sweep {name}: a GPU sweep, run it with --device gpu")
        return _gpu_sweep(name, dtypes or ["bfloat16"])
    raise ValueError(f"sweep: expected one of {SWEEPS}, got {name!r}")


GPU_WIDTH = 2048


def _gpu_sweep(name: str, dtypes: list[str]) -> tuple[list[Config], Budget]:
    def grid(lengths, batch, head_sizes, causal):
        return [Config(batch, L, L, GPU_WIDTH, GPU_WIDTH // d, GPU_WIDTH // d, dtype, c, "gpu")
                for dtype, d, c, L in itertools.product(dtypes, head_sizes, causal, lengths)]

    if name == "gpu-core":
        configs = grid([1024, 2048, 4096, 8192, 16384], batch=4, head_sizes=[64, 128], causal=[False, True])
        return configs, Budget(max_time=0.2, min_runs=10, point_timeout=180)
    if name == "gpu-layer":
        configs = grid([4096, 8192], batch=4, head_sizes=[128], causal=[False])
        return configs, Budget(max_time=0.3, min_runs=10, point_timeout=180)
    configs = grid([4096, 8192, 16384, 32768], batch=1, head_sizes=[128], causal=[False, True])
    return configs, Budget(max_time=0.1, min_runs=5, point_timeout=180, compiled_memory=True)


@dataclasses.dataclass(frozen=True)
class Point:
    """One implementation on one configuration in one compile mode (both passes)."""

    impl: str
    config: Config
    compile: str

    @property
    def series(self) -> tuple:
        """Everything but the sequence lengths: points of one series differ only in size."""
        c = dataclasses.replace(self.config, L_q=0, L_k=0)
        return (self.impl, self.compile, c)

    @property
    def area(self) -> int:
        return self.config.L_q * self.config.L_k

    def to_dict(self) -> dict[str, Any]:
        return {"impl": self.impl, "config": self.config.to_dict(), "compile": self.compile}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Point":
        return cls(data["impl"], Config.from_dict(data["config"]), data["compile"])
