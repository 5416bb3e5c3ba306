"""What the scheduler and the sink share about one camera: its capture, which of its models have
a request in flight, its counters and its trackers. Counters are plain attributes so that
whoever reports them (the state message, a metrics endpoint) reads them without a protocol."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from edged.sources.camera.capture import Capture, Frame
from edged.sources.camera.config import CameraConfig
from edged.sources.camera.tracker import Tracker


@dataclass
class CameraRuntime:
    cam: CameraConfig
    capture: Capture
    models: tuple[str, ...]  # the camera's models that are served
    trackers: dict[str, Tracker] = field(default_factory=dict)
    inflight: set[str] = field(default_factory=set)  # models holding one of this camera's frames
    next_due: float = 0.0
    inferred: dict[str, int] = field(default_factory=dict)  # per model
    snapshot_due: float = 0.0
    crops: dict[str, int] = field(default_factory=dict)  # secondary crops: classified, too_small, late, failed
    lock: threading.Lock = field(default_factory=threading.Lock)
    _done: collections.deque = field(default_factory=lambda: collections.deque(maxlen=512))  # (monotonic, model)
    _ages: collections.deque = field(default_factory=lambda: collections.deque(maxlen=64))  # ms at inference start

    @property
    def name(self) -> str:
        return self.cam.name

    @property
    def period(self) -> float:
        return 1.0 / self.cam.fps

    def claim(self) -> tuple[str, ...]:
        """The models without a request in flight for this camera, now marked as busy."""
        with self.lock:
            free = tuple(m for m in self.models if m not in self.inflight)
            self.inflight.update(free)
            return free

    def release(self, model: str) -> None:
        with self.lock:
            self.inflight.discard(model)

    def count_drop(self, stage: str, n: int = 1) -> None:
        with self.lock:
            self.capture.counters.drops[stage] = self.capture.counters.drops.get(stage, 0) + n

    def count_crop(self, outcome: str, n: int = 1) -> None:
        with self.lock:
            self.crops[outcome] = self.crops.get(outcome, 0) + n

    def inferred_one(self, model: str, age_ms: float) -> None:
        with self.lock:
            self.inferred[model] = self.inferred.get(model, 0) + 1
            self._done.append((time.monotonic(), model))
            self._ages.append(age_ms)

    def fps_inferred(self, window: float = 5.0) -> float:
        """Frames inferred per second over the last ``window`` s (by the camera's first model)."""
        now = time.monotonic()
        first = self.models[0] if self.models else None
        with self.lock:
            n = sum(1 for t, m in self._done if m == first and now - t <= window)
        return round(n / window, 2)

    def age_ms(self) -> dict[str, float] | None:
        with self.lock:
            ages = list(self._ages)
        if not ages:
            return None
        return {"p50": round(float(np.percentile(ages, 50)), 1), "max": round(max(ages), 1)}


@dataclass
class FrameRef:
    """A work item's context: the camera and the frame (pixels kept only for a due snapshot)."""

    runtime: CameraRuntime
    frame: Frame
    keep_pixels: bool = False
    taken: float = field(default_factory=time.monotonic)
