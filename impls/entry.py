"""``Entry``: what the suite knows of one implementation before importing it.

The registry, the broken catalog and the kernel benchmark's cores are all tuples of
entries; this module imports nothing of theirs, so each can import it.
"""

from __future__ import annotations

import dataclasses

KINDS = ("oracle", "ours", "builtin", "broken", "plugin", "kernel")


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    framework: str               # numpy | torch | tensorflow | jax
    target: str                  # "module.path:factory"
    description: str
    kind: str = "ours"           # one of KINDS
    env: tuple[tuple[str, str], ...] = ()  # environment its process needs (KERAS_BACKEND)

    @property
    def process_key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """Implementations with the same key can be judged in one process."""
        return (self.framework, self.env)
