"""Exceptions shared by the whole suite."""


class Unsupported(Exception):
    """Raised by a factory (or an adapter) for a spec or case it does not handle.

    The suite records the case as unsupported, with this message as the reason; it is
    never counted as a failure.
    """


def decline(layer: str, reasons) -> None:
    """Raise ``Unsupported`` naming ``layer`` for the first of ``reasons`` (pairs
    ``(applies, why)``) that applies: what an adapter's layer has no option for."""
    for applies, why in reasons:
        if applies:
            raise Unsupported(f"{layer}: {why}")


class PluginError(ValueError):
    """An implementation name that cannot be resolved to a factory (one-line message)."""
