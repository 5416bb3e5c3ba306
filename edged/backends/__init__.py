"""Inference backends behind one small seam (see :mod:`edged.backends.base`)."""
