"""The camera source: every configured camera's capture, the scheduler and the sink, wired to the
camera pipeline, the event emitter and the MQTT publisher.

What it promises the daemon:

* Camera work never reaches the DICOM path: it is given only the camera instances of models
  (their own backends and batchers) and its own :class:`~edged.pipeline.Pipeline`.
* A camera that is missing, stalled or crashing is a state, not a failure of the daemon:
  :meth:`healthy` is about the scheduler and sink threads only, never about cameras.
* Availability (retained ``online``/``offline``) follows the capture state at once; the retained
  state message is sent on every change and every ``capture.state_interval_s``; camera events
  (``online``, ``offline``, ``stalled``, ``restarted``, ``reconnected``) are durable.
* Secondary classifiers (``cameras[].models[].secondary``) run on crops of the detector's frames
  through the same camera pipeline, one batcher per classifier for every camera
  (:mod:`edged.sources.camera.secondary`); their crops never delay a detector.
* Counters are plain attributes of each :class:`CameraRuntime` (``capture.counters``,
  ``inferred``): whoever reports metrics reads them; :meth:`stats` is a copy for the control API.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
from collections.abc import Callable

from edged.batcher.served import ServedModel
from edged.config.schema import Config
from edged.mqtt import messages
from edged.outbox.emitter import EventEmitter
from edged.sources.camera.capture import HELPER, Capture
from edged.sources.camera.pipelines import describe, loops, source_label
from edged.sources.camera.runtime import CameraRuntime
from edged.sources.camera.scheduler import Scheduler
from edged.sources.camera.secondary import SecondaryStage
from edged.sources.camera.sink import CameraSink
from edged.sources.camera.snapshots import SnapshotWriter
from edged.sources.work import WorkItem

log = logging.getLogger("edged.camera")
Publish = Callable[[str, bytes, bool], None]  # topic, payload, retained


def probe_helper(python: str, timeout: float = 30.0) -> dict:
    """What the capture helper's Python offers: versions and which GStreamer elements exist."""
    try:
        r = subprocess.run([python, str(HELPER), "--probe"], capture_output=True, text=True, timeout=timeout)
        info = json.loads(r.stdout or "{}")
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "elements": {}}
    return info if isinstance(info, dict) else {"error": "unreadable probe", "elements": {}}


class CameraSource:
    def __init__(self, cfg: Config, models: dict[str, ServedModel], submit: Callable[[WorkItem], bool],
                 events: EventEmitter, topics: messages.Topics, publish: Publish | None = None):
        self.cfg, self.models, self.events, self.topics = cfg, models, events, topics
        self.publish = publish or (lambda topic, data, retain: None)
        cap = cfg.capture
        self.snapshots = SnapshotWriter(cfg.snapshot_dir, cap.snapshots.interval_s, cap.snapshots.keep,
                                        cap.snapshots.redact_model) if cap.snapshots.enabled else None
        wants_secondary = any(cam.secondary_names for cam in cfg.cameras if cam.enabled)
        self.secondary = SecondaryStage(submit, models, cap.secondary_wait_ms / 1000.0) if wants_secondary else None
        self.sink = CameraSink(topics, events, lambda t, d: self.publish(t, d, False),
                               max_rate_hz=cap.detections_max_rate_hz, object_timeout_s=cap.object_timeout_s,
                               object_update_s=cap.object_update_s, object_min_frames=cap.object_min_frames,
                               snapshot=self.snapshots,
                               snapshot_model=cap.snapshots.redact_model if self.snapshots else None,
                               secondary=self.secondary)
        self.runtimes: list[CameraRuntime] = []
        self.probe: dict = {}
        self._submit = submit
        self._availability: dict[str, str] = {}
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()  # a state is offered in the order it was built
        self._stopping = threading.Event()
        self._state_thread = threading.Thread(target=self._state_loop, name="camera-state", daemon=True)
        self.scheduler: Scheduler | None = None

    def start(self) -> None:
        cap = self.cfg.capture
        self.probe = probe_helper(str(cap.python))
        if self.probe.get("error"):
            log.error("capture helper Python %s cannot run GStreamer (%s): cameras stay offline; install python3-gi "
                      "and the GStreamer plugins (see README)", cap.python, self.probe["error"])
        elements = self.probe.get("elements") or {}
        for cam in self.cfg.cameras:
            served = tuple(m for m in cam.model_names if m in self.models)
            for m in cam.all_model_names:
                if m not in self.models:
                    log.error("camera %s: model %s is not served for cameras; the camera runs without it", cam.name, m)
            capture = Capture(cam, describe(cam, elements, cap.decoder), cap.python, on_event=self._camera_event,
                              on_state=self._state_changed, loop=loops(cam))
            rt = CameraRuntime(cam, capture, served)
            if cam.secondary_names:  # counted from the start, so a consumer sees zeros, not absence
                capture.counters.drops.setdefault("secondary", 0)
                rt.crops.update({k: 0 for k in ("classified", "too_small", "late", "failed")})
            self.runtimes.append(rt)
        self.scheduler = Scheduler(self.runtimes, self._submit, self.sink,
                                   self.snapshots.wanted if self.snapshots else (lambda rt: False))
        for rt in self.runtimes:
            self._publish_availability(rt, force=True)
            self._publish_state(rt)
        self.sink.start(self.runtimes)
        self.scheduler.start()
        for rt in self.runtimes:
            rt.capture.start()
        self._state_thread.start()
        log.info("cameras: %s", ", ".join(f"{rt.name} ({source_label(rt.cam)}, {rt.cam.fps:g} fps, "
                                            f"{'+'.join(rt.models) or 'no model'})" for rt in self.runtimes) or "none")

    def stop(self) -> None:
        self._stopping.set()
        if self.scheduler is not None:
            self.scheduler.stop()
        for rt in self.runtimes:
            rt.capture.stop()
        self.sink.stop()
        for rt in self.runtimes:
            self._publish_availability(rt, force=True, state="offline")
            self._publish_state(rt)

    def healthy(self) -> bool:
        """The scheduler and the sink run; the cameras themselves never count (one may be gone)."""
        return self.scheduler is None or (self.scheduler.alive() and self.sink.alive())

    def stats(self) -> dict:
        return {rt.name: self._state(rt) for rt in self.runtimes}

    # -- events and state ----------------------------------------------------------------
    def _camera_event(self, capture: Capture, reason: str, fields: dict) -> None:
        detail = fields.pop("detail", None)
        self.events.emit("camera", reason, camera=capture.name, detail=detail or None,
                         fields={k: v for k, v in fields.items() if v is not None} or None)

    def _state_changed(self, capture: Capture) -> None:
        rt = next((r for r in self.runtimes if r.capture is capture), None)
        if rt is not None:
            self._publish_availability(rt)
            self._publish_state(rt)

    def _publish_availability(self, rt: CameraRuntime, force: bool = False, state: str | None = None) -> None:
        value = state or ("online" if rt.capture.state == "streaming" else "offline")
        with self._lock:
            if not force and self._availability.get(rt.name) == value:
                return
            self._availability[rt.name] = value
        self.publish(self.topics.camera_availability(rt.name), messages.encode_capped("availability", value), True)

    def _state(self, rt: CameraRuntime) -> dict:
        c = rt.capture
        latest = c.counters
        with rt.lock:
            drops, inferred, crops = dict(latest.drops), dict(rt.inferred), dict(rt.crops)
        state = c.state if not self._stopping.is_set() or c.state == "disabled" else "stopped"
        return messages.camera_state(
            self.topics.node, rt.name, state=state, enabled=rt.cam.enabled, source=source_label(rt.cam),
            decoder=c.decoder, resolution=c.resolution, models=list(rt.models),
            fps={"configured": rt.cam.fps, "in": c.fps_in(), "inferred": rt.fps_inferred()},
            frames={"in": latest.frames_in, "inferred": inferred, "age_ms": rt.age_ms(),
                    **({"crops": crops} if crops else {})}, drops=drops,
            last_frame_age_s=c.frame_age_s(), reconnects=latest.reconnects, restarts=latest.restarts,
            attempts=latest.attempts, last_error=c.last_error, last_attempt=c.last_attempt,
            next_attempt=c.next_attempt, backoff_s=c.backoff_s)

    def _publish_state(self, rt: CameraRuntime) -> None:
        """Built and offered under one lock: the periodic thread and a capture's transition must
        not offer an older state after a newer one (the publisher keeps the last offered)."""
        with self._state_lock:
            try:
                data = messages.encode_capped("camera_state", self._state(rt))
            except messages.PayloadTooLarge as exc:
                log.error("camera %s: %s", rt.name, exc)
                return
            self.publish(self.topics.camera_state(rt.name), data, True)

    def _state_loop(self) -> None:
        while not self._stopping.wait(self.cfg.capture.state_interval_s):
            for rt in self.runtimes:
                self._publish_state(rt)
