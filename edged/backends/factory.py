"""Choosing, constructing and loading the backend of one configured model.

``backend: onnxruntime`` runs ONNX Runtime in the daemon's process (the lowest overhead on a
machine without a GPU). ``auto`` and ``tensorrt`` go through the isolated worker: TensorRT
where the worker Python imports it and a GPU is present, else ONNX Runtime in that worker —
the choice and its reason end up in the log and the status message.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edged.backends.base import Backend
from edged.backends.onnxruntime import OnnxRuntimeBackend
from edged.config.schema import Config, ModelEntry
from edged.models.manifest import LoadedModel

EventCallback = Callable[[str, dict], None]
Progress = Callable[[str, "float | None"], None]


def make_backend(cfg: Config, entry: ModelEntry, model: LoadedModel, *, on_event: EventCallback | None = None,
                 progress: Progress | None = None) -> tuple[Backend, str]:
    """Return a *loaded* backend and a sentence saying why it was chosen."""
    if entry.backend == "onnxruntime":
        backend = OnnxRuntimeBackend(model.onnx_path, threads=entry.threads)
        backend.load()
        return backend, "backend: onnxruntime configured; ONNX Runtime (FP32, CPU) in the daemon's process"
    from edged.backends.tensorrt.selection import select_backend

    batching = entry.batching or model.manifest.batching
    return select_backend(
        model, entry.backend, cfg.tensorrt, cfg.cache_dir, precision=entry.precision, dla_core=entry.dla_core,
        max_batch=batching.max_batch_size, threads=entry.threads, preprocess=preprocess_file(model),
        progress=progress, on_event=on_event,
    )


def preprocess_file(model: LoadedModel) -> Callable[[Path], np.ndarray]:
    """A DICOM file → the model's input tensor, through the model's own pixel pipeline (INT8
    calibration and the accuracy gate must see exactly what serving sees)."""
    from pydicom import dcmread

    from edged.preprocess.pixels import prepare

    def run(path: Path) -> np.ndarray:
        return prepare(dcmread(path), model.manifest.input, model.manifest.preprocess)

    return run
