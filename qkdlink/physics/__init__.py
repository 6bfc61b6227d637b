"""Pure physics functions (no I/O, no state). Every formula cites its source in its docstring."""
