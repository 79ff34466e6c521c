"""A plug-in module that cannot be imported (its dependency is missing)."""

import attnsuite_no_such_dependency  # noqa: F401


def factory(spec):  # never reached
    raise AssertionError("unreachable")
