"""Choosing and constructing the backend for one configured model."""

from __future__ import annotations

from edged.backends.base import Backend
from edged.backends.onnxruntime import OnnxRuntimeBackend
from edged.config.schema import Config, ModelEntry
from edged.models.manifest import LoadedModel


def make_backend(cfg: Config, entry: ModelEntry, model: LoadedModel) -> tuple[Backend, str]:
    """Return the backend and a sentence saying why it was chosen (logged and in the status)."""
    if entry.backend == "onnxruntime":
        return OnnxRuntimeBackend(model.onnx_path, threads=entry.threads), "configured backend: onnxruntime"
    raise ValueError(f"model {entry.name}: backend {entry.backend!r} is not available in this build")
