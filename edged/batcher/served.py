"""A model as the pipeline serves it: manifest, loaded backend, its batcher and its backpressure.

``inflight`` bounds what the pipeline may hand the batcher to the batcher's own queue size: a
durable source (DICOM) waits for room, a live source (a camera) drops the frame instead
(:meth:`try_reserve`), so neither ever meets :class:`QueueFull` in normal operation.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from edged.backends.base import Backend, BackendInfo
from edged.batcher.dynamic import DynamicBatcher
from edged.models.manifest import LoadedModel, ModelManifest


@dataclass
class ServedModel:
    loaded: LoadedModel
    backend: Backend
    batcher: DynamicBatcher
    info: BackendInfo
    reason: str = ""  # why this backend serves the model (status message, log)
    source: str = "dicom"  # which source's instance this is ("dicom" or "camera")
    inflight: threading.BoundedSemaphore = field(init=False)

    def __post_init__(self) -> None:
        # never more in flight than the batcher will queue (its spec may override the manifest's)
        self.inflight = threading.BoundedSemaphore(self.batcher.max_queue_size)

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def manifest(self) -> ModelManifest:
        return self.loaded.manifest

    def reserve(self) -> None:
        """Wait for room in the batcher's queue (durable sources)."""
        self.inflight.acquire()

    def try_reserve(self) -> bool:
        """Room now, or False (live sources drop instead of waiting)."""
        return self.inflight.acquire(blocking=False)

    def release(self) -> None:
        self.inflight.release()

    def sample_shape(self) -> tuple[int, int, int]:
        """One input sample's shape as the manifest gives it (fills dynamic network dimensions)."""
        spec = self.manifest.input
        return (spec.channels, spec.height, spec.width) if spec.layout == "NCHW" else \
            (spec.height, spec.width, spec.channels)
