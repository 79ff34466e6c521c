"""How much of the machine other processes took while a measurement ran.

A timing on a shared machine measures the code and the machine's load together. The
1-minute load average lags behind the bursts that matter (another job's test run taking
a core for ten seconds), so the measurement window itself is watched: the machine's busy
CPU time over the window (``/proc/stat``, steal included: a hypervisor taking the CPU is
contention too) less this process's own CPU time, over the wall time, is the number of
CPUs other processes kept busy (``others_cpus``). Linux only; elsewhere ``None``.
Resolution: one clock tick (10 ms) of CPU time on each side, so about ±0.1 CPU over a
0.2 s window.
"""

from __future__ import annotations

import os
import time

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_seconds() -> float | None:
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / _TICKS


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


class Window:
    """Started on creation; ``others_cpus()`` reads the CPUs others used since."""

    def __init__(self):
        self.busy, self.own, self.wall = _busy_seconds(), _own_seconds(), time.perf_counter()

    def others_cpus(self) -> float | None:
        busy, own, wall = _busy_seconds(), _own_seconds(), time.perf_counter() - self.wall
        if busy is None or self.busy is None or wall <= 0:
            return None
        return max(0.0, (busy - self.busy - (own - self.own)) / wall)
