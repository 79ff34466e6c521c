"""Command-line value types shared by ``attnsuite check`` and ``attnsuite bench``."""

from __future__ import annotations


def int_in(low: int, high: int | None = None):
    """An argparse type: an int in [low, high) (argparse reports a non-int as "invalid int value")."""
    import argparse

    def parse(text: str) -> int:
        value = int(text)
        if value < low or (high is not None and value >= high):
            bound = f"at least {low}" if high is None else f"from {low} to {high - 1}"
            raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {value}")
        return value
    parse.__name__ = "int"
    return parse
