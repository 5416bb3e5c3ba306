"""Where camera frames end: detections decoded, filtered by the camera's ROI, tracked, published.

The pipeline calls the sink from batcher threads; the sink only hands each outcome to its own
thread (so a slow disk for an object event or a snapshot never holds a batcher) and frees the
camera's in-flight slot for that model at once. On that thread, per outcome:

* detections are decoded with the frame's letterbox undone (boxes normalized to the frame) and
  kept only when their centre lies inside the camera's ROI polygon;
* the tracker gives them stable object ids; ``new``/``update``/``end`` become durable ``object``
  events through the one :class:`~edged.outbox.emitter.EventEmitter`;
* the frame's detections become a QoS 0 message, at most ``detections_max_rate_hz`` per camera
  and model: between two sends only the newest waits (newest wins);
* a due snapshot is handed to the snapshot writer, which redacts faces before writing;
* with secondary classifiers, the frame's crops are handed to
  :class:`~edged.sources.camera.secondary.SecondaryStage`, and the frame's message and object
  events wait (bounded by ``capture.secondary_wait_ms``) for their results; the detector does not.

Nothing here ever publishes pixels: payloads are built by :mod:`edged.mqtt.messages` and capped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from edged.mqtt import messages
from edged.outbox.emitter import EventEmitter
from edged.postprocess.decode import decode_one, kind_of
from edged.preprocess.frames import geometry_for
from edged.sources.camera.runtime import CameraRuntime, FrameRef
from edged.sources.camera.secondary import FrameHold, SecondaryStage
from edged.sources.camera.tracker import TrackedObject, Tracker
from edged.sources.work import WorkItem

log = logging.getLogger("edged.camera")
Publish = Callable[[str, bytes], None]


def inside(polygon: list[tuple[float, float]] | None, x: float, y: float) -> bool:
    """Even-odd rule; no polygon means the whole frame."""
    if not polygon:
        return True
    result = False
    j = len(polygon) - 1
    for i, (xi, yi) in enumerate(polygon):
        xj, yj = polygon[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            result = not result
        j = i
    return result


class CameraSink:
    def __init__(self, topics: messages.Topics, events: EventEmitter, publish: Publish, *, max_rate_hz: float = 5.0,
                 object_timeout_s: float = 2.0, object_update_s: float = 5.0, object_min_frames: int = 2,
                 snapshot: Callable[[FrameRef, list[dict]], None] | None = None, snapshot_model: str | None = None,
                 secondary: SecondaryStage | None = None):
        self.topics, self.events, self.publish = topics, events, publish
        self.min_interval = 1.0 / max_rate_hz
        self.object_timeout_s, self.object_update_s = object_timeout_s, object_update_s
        self.object_min_frames = object_min_frames
        self.snapshot, self.snapshot_model = snapshot, snapshot_model
        self._queue: queue.Queue[tuple | None] = queue.Queue()
        self.secondary = secondary
        if secondary is not None:
            secondary.deliver = self._queue.put
        self._pending: dict[tuple[str, str], bytes] = {}  # (camera, model) -> newest unsent payload
        self._next_send: dict[tuple[str, str], float] = {}
        self._newest: dict[tuple[str, str], float] = {}  # when the newest message built was handled
        self._runtimes: list[CameraRuntime] = []
        self._thread = threading.Thread(target=self._run, name="camera-sink", daemon=True)
        self._stopping = threading.Event()
        self.failures_logged: dict[str, float] = {}

    def start(self, runtimes: list[CameraRuntime]) -> None:
        self._runtimes = runtimes
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        for rt in self._runtimes:  # objects of a stopped daemon end now, not never
            for model, tracker in rt.trackers.items():
                self._object_events(rt, model, tracker.end_all())

    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the pipeline's Sink protocol (batcher and preprocess threads) --------------------
    def completed(self, item: WorkItem, model: Any, completion: Any, pre: dict[str, float], last: bool,
                  incomplete: bool) -> None:
        item.context.runtime.release(model.name)
        self._queue.put(("done", item, model, completion, pre))

    def failed(self, item: WorkItem, reason: str, detail: str, transient: bool) -> None:
        rt: CameraRuntime = item.context.runtime
        for name in item.models:
            rt.release(name)
        rt.count_drop("failed")
        self._log_once(f"{rt.name}:{reason}", "camera %s: frame not inferred (%s: %s)", rt.name, reason, detail)

    def dropped(self, item: WorkItem, model: Any) -> None:
        rt: CameraRuntime = item.context.runtime
        rt.release(model.name)
        rt.count_drop("queue")

    # -- the sink's thread ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                entry = self._queue.get(timeout=self._wait())
            except queue.Empty:
                entry = ()
            if entry is None:
                for hold in self.secondary.due(0.0, every=True) if self.secondary else []:
                    self._finish(hold)
                self._flush(time.monotonic(), force=True)
                return
            try:
                if entry and entry[0] == "crop":
                    hold = self.secondary.settle(entry[1], entry[2], entry[1].context.hold.runtime.trackers)
                    if hold is not None:
                        self._finish(hold)
                elif entry:
                    self._handle(*entry[1:])
                now = time.monotonic()
                for hold in self.secondary.due(now) if self.secondary else []:
                    self._finish(hold)
                self._flush(now)
                for rt in self._runtimes:
                    for model, tracker in rt.trackers.items():
                        self._object_events(rt, model, tracker.expire(time.time()))
            except Exception:
                log.exception("camera sink: an outcome could not be handled")

    def _wait(self) -> float:
        times = [self._next_send.get(k, 0.0) for k in self._pending]
        deadline = self.secondary.next_deadline() if self.secondary else None
        if deadline is not None:
            times.append(deadline)
        if not times:
            return 0.5
        return min(0.5, max(0.0, min(times) - time.monotonic()))

    def _handle(self, item: WorkItem, model: Any, completion: Any, pre: dict[str, float]) -> None:
        ref: FrameRef = item.context
        rt, frame = ref.runtime, ref.frame
        if completion.error is not None or completion.outputs is None:
            rt.count_drop("failed")
            self._log_once(f"{rt.name}:{model.name}:backend", "camera %s: %s failed a batch: %s", rt.name, model.name,
                           completion.error)
            return
        manifest = model.manifest
        geo = geometry_for(frame.width, frame.height, manifest.input, manifest.preprocess)
        decoded = decode_one(manifest.decoded_outputs, completion.outputs, geo)
        found = [d for spec in manifest.decoded_outputs if kind_of(spec) == "detections" for d in decoded[spec.name]]
        dets = [d for d in found if inside(rt.cam.roi, (d["box"][0] + d["box"][2]) / 2, (d["box"][1] + d["box"][3]) / 2)]
        dets = sorted(dets, key=lambda d: -d["score"])[:100]
        now_wall = time.time()
        tracker = rt.trackers.setdefault(model.name, Tracker(self.object_timeout_s, self.object_update_s,
                                                                        min_frames=self.object_min_frames))
        hold = FrameHold(rt, model.name, dets, time.monotonic() + (self.secondary.wait_s if self.secondary else 0.0))
        hold.events = tracker.update(dets, now_wall)
        start = completion.window[0]
        age_ms = ((start - frame.received) + frame.lag_s) * 1000.0  # capture → inference start
        rt.inferred_one(model.name, age_ms)
        hold.extra = {"model": model, "frame": frame, "timings": {
            "preprocess": round(pre.get("transform_ms", 0.0), 3), "queue": round(completion.queue_ms, 3),
            "inference": round(completion.compute_ms, 3), "batch_size": completion.batch_size,
            "age_at_inference": round(age_ms, 1)}}
        if self.secondary is not None:
            self.secondary.plan(ref, model.name, dets, tracker, hold)
        if not hold.outstanding:
            self._finish(hold)
        if self.snapshot is not None and model.name == self.snapshot_model and ref.keep_pixels:
            self.snapshot(ref, found)  # every face is redacted, inside the ROI or not

    def _finish(self, hold: FrameHold) -> None:
        """The frame's object events and detections message, with whatever its crops gave in time."""
        rt, model, frame = hold.runtime, hold.extra["model"], hold.extra["frame"]
        self._object_events(rt, model.name, hold.events)
        key = (rt.name, model.name)
        if hold.started < self._newest.get(key, float("-inf")):
            return  # a newer frame's message (whose crops settled first) already took its place: newest wins
        self._newest[key] = hold.started
        timings = dict(hold.extra["timings"])
        if hold.planned:
            timings["secondary_wait"] = round((time.monotonic() - hold.started) * 1000.0, 1)
        now_wall = time.time()
        info = {"seq": frame.seq, "captured": messages.iso_time(frame.captured), "width": frame.width,
                "height": frame.height, "age_ms": round((now_wall - frame.captured) * 1000.0, 1)}
        payload = messages.detections(self.topics.node, rt.name, manifest=model.manifest, info=model.info, frame=info,
                                      detections_=hold.with_results(), timings=timings)
        try:
            self._pending[key] = messages.encode_capped("detections", payload)
        except messages.PayloadTooLarge as exc:
            self._log_once(f"{rt.name}:cap", "camera %s: %s", rt.name, exc)

    def _flush(self, now: float, force: bool = False) -> None:
        for key in list(self._pending):
            if force or now >= self._next_send.get(key, 0.0):
                self.publish(self.topics.detections(*key), self._pending.pop(key))
                self._next_send[key] = now + self.min_interval

    def _object_events(self, rt: CameraRuntime, model: str, events: list[tuple[str, TrackedObject]]) -> None:
        """A frame's object events in one transaction (one fsync), not one each."""
        if not events:
            return
        records = [self.events.record("object", kind, camera=rt.name, model=model, object=obj.summary())
                   for kind, obj in events]
        try:
            self.events.commit(records)
        except Exception as exc:  # a full disk: the events are lost, the detections stream goes on
            self._log_once(f"{rt.name}:events", "camera %s: object events not recorded (%s)", rt.name, exc)

    def _log_once(self, key: str, msg: str, *args: object) -> None:
        """A failure that repeats every frame is logged once a minute, not 30 times a second."""
        now = time.monotonic()
        if now - self.failures_logged.get(key, -1e9) >= 60.0:
            self.failures_logged[key] = now
            log.warning(msg, *args)
