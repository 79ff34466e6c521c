"""Our implementations of the attention spec, one module per framework."""
