"""Adapters that run each framework's built-in attention layers behind the suite's contract."""
