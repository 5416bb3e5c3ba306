"""Dynamic batching with Triton's semantics (see :mod:`edged.batcher.dynamic`)."""
