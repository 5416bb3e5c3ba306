"""Model manifests and the deterministic reference models (see :mod:`edged.models.synth`)."""
