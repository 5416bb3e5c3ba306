"""Fair per-model scheduling of frames: each camera at its own ``fps``, at most one request in
flight per camera and model, batches formed across cameras by the model's dynamic batcher.

Every tick of a camera (each 1/fps s) hands its newest frame to those of its models that hold
none of its frames; a model still busy with the previous one makes that tick a counted ``busy``
drop, so a slow model lowers the inferred rate instead of growing a queue. Cameras due in the
same pass are visited starting from a rotating offset, so none is always first when a model's
queue has room for only some of them (a full queue is a counted ``queue`` drop, decided by
:meth:`ServedModel.try_reserve` in the pipeline, never a wait). A tick that finds no new frame
(the camera is slower than its fps, or offline) is skipped. A late tick is not made up for:
the next one is due a period after now, never in a burst.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edged.preprocess.frames import prepare_frame
from edged.sources.camera.pipelines import source_label
from edged.sources.camera.runtime import CameraRuntime, FrameRef
from edged.sources.work import Prepared, Sink, WorkItem

log = logging.getLogger("edged.camera")


class Scheduler:
    def __init__(self, cameras: list[CameraRuntime], submit: Callable[[WorkItem], bool], sink: Sink,
                 snapshot_wanted: Callable[[CameraRuntime], bool] = lambda rt: False):
        self.cameras, self.submit, self.sink, self.snapshot_wanted = cameras, submit, sink, snapshot_wanted
        self._offset = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camera-scheduler", daemon=True)

    def start(self) -> None:
        now = time.monotonic()
        for rt in self.cameras:
            rt.next_due = now
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                wait = self.tick(time.monotonic())
            except Exception:  # never let one bad frame end scheduling for every camera
                log.exception("camera scheduler: tick failed")
                wait = 0.1
            self._stopping.wait(wait)

    def tick(self, now: float) -> float:
        """Hand out every due frame; returns the seconds until the next camera is due."""
        n = len(self.cameras)
        if not n:
            return 1.0
        self._offset = (self._offset + 1) % n
        for rt in self.cameras[self._offset:] + self.cameras[:self._offset]:
            if rt.next_due > now:
                continue
            rt.next_due = max(rt.next_due + rt.period, now + 0.5 * rt.period)
            self._serve(rt, now)
        return max(0.001, min(rt.next_due for rt in self.cameras) - time.monotonic())

    def _serve(self, rt: CameraRuntime, now: float) -> None:
        if not rt.models or rt.capture.state != "streaming":
            return
        free = rt.claim()
        busy = len(rt.models) - len(free)
        if busy:
            rt.count_drop("busy", busy)
        if not free:
            return
        frame = rt.capture.take()
        if frame is None:  # nothing new since the last tick
            for m in free:
                rt.release(m)
            return
        ref = FrameRef(rt, frame, keep_pixels=self.snapshot_wanted(rt))
        item = WorkItem(f"{rt.name}:{frame.seq}", free, {"camera": rt.name, "kind": source_label(rt.cam)},
                        _prepare(ref), self.sink, group=rt.name, live=True, arrived=now,
                        discard=lambda: None, context=ref)
        if not self.submit(item):  # the pipeline is stopping
            for m in free:
                rt.release(m)


def _prepare(ref: FrameRef) -> Callable[[object], Prepared]:
    def prepare(manifest) -> Prepared:
        return prepare_frame(ref.frame.pixels, manifest.input, manifest.preprocess)
    return prepare
