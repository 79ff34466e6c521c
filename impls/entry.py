"""``Entry``: what the suite knows of one implementation before importing it.

The registry, the broken catalog and the kernel benchmark's cores are all tuples of
entries; this module imports nothing of theirs, so each can import it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

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


def process_groups(entries: Sequence[Entry]) -> list[tuple[dict[str, str], list[int]]]:
    """Which entries can share a process: (its environment, their positions in ``entries``).
    One process per framework, so that each framework is imported once, where its entries
    agree on the environment (an entry that asks for none, e.g. ``torch.fused``, takes
    Keras's backend setting as well); else one per ``process_key``."""
    by_framework: dict[str, list[int]] = {}
    for i, entry in enumerate(entries):
        by_framework.setdefault(entry.framework, []).append(i)
    groups = []
    for members in by_framework.values():
        envs = {entries[i].env for i in members if entries[i].env}
        if len(envs) <= 1:
            groups.append((dict(next(iter(envs), ())), members))
            continue
        by_key: dict[tuple, list[int]] = {}
        for i in members:
            by_key.setdefault(entries[i].process_key, []).append(i)
        groups += [(dict(key[1]), group) for key, group in by_key.items()]
    return groups
