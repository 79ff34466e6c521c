"""Weight converters between the canonical layout and each built-in layer's own weights."""
