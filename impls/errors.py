"""Exceptions shared by the whole suite."""


class Unsupported(Exception):
    """Raised by a factory (or an adapter) for a spec or case it does not handle.

    The suite records the case as unsupported, with this message as the reason; it is
    never counted as a failure.
    """


class PluginError(ValueError):
    """An implementation name that cannot be resolved to a factory (one-line message)."""
