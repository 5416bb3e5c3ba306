"""Secondary classifiers on detections (detect → crop → classify), and what waits for them.

After a detector's frame is decoded and tracked, every detection whose label a secondary
classifier applies to (``cameras[].models[].secondary``) and whose box is at least ``min_box_px``
on its shorter side becomes one crop work item per classifier, at most
:data:`~edged.sources.camera.secondary_config.MAX_CROPS` detections per frame (highest scores
first). Crop items go through the camera pipeline like frames: cut from the frame the detector
saw and made into the classifier's input by a preprocess worker
(:func:`edged.preprocess.crops.prepare_crop`), then queued on the classifier's one dynamic batcher,
which every camera shares, so crops of several objects, frames and cameras form one batch. They
are live items: a full classifier queue drops the crop at once (counted as the camera's
``secondary`` drop), it never waits.

The promise about waiting, and its reason: the detector never waits for a classifier. Its frame
slot is freed when its own batch completes, so a slow classifier cannot lower the rate at which
frames are inferred. What waits is the frame's *message*: a :class:`FrameHold` keeps the frame's
detections and object events until each of its crops has an outcome (classified, dropped,
failed) or ``capture.secondary_wait_ms`` has passed, whichever comes first, so a consumer
usually gets a frame's boxes and their classes in one message, and at worst ``secondary_wait_ms``
late. A result that comes after its frame was published still counts for its object (object events
carry per classifier the mean scores over the crops classified so far, and that number). Only the
camera sink's thread touches holds and trackers: outcomes from batcher threads are handed to it
through ``deliver``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edged.batcher.served import ServedModel
from edged.postprocess.decode import decode_one
from edged.preprocess.crops import box_px, prepare_crop
from edged.sources.camera.runtime import CameraRuntime, FrameRef
from edged.sources.camera.secondary_config import MAX_CLASSIFIED_FRAME, MAX_CROPS, MAX_FRAME_LABELS, SecondarySpec
from edged.sources.camera.tracker import Tracker
from edged.sources.work import Prepared, WorkItem

log = logging.getLogger("edged.camera")


@dataclass(eq=False)
class FrameHold:
    """A detector's frame whose message waits for its crops (see the module docstring)."""

    runtime: CameraRuntime
    detector: str
    dets: list[dict]
    deadline: float
    started: float = field(default_factory=time.monotonic)
    outstanding: int = 0
    planned: int = 0  # crops submitted for this frame
    results: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)  # det index -> model -> scores
    events: list = field(default_factory=list)  # the frame's object events, committed when it is published
    extra: dict = field(default_factory=dict)  # what the sink needs to build the message
    done: bool = False

    def with_results(self) -> list[dict]:
        """The frame's detections, each classified one carrying ``secondary`` (top labels per model);
        a frame with any classified detection keeps its :data:`MAX_CLASSIFIED_FRAME` best (the
        detections schema's bound that keeps such a message under its size cap)."""
        for i, scores in self.results.items():
            self.dets[i]["secondary"] = {
                m: dict(sorted(s.items(), key=lambda kv: -kv[1])[:MAX_FRAME_LABELS]) for m, s in scores.items()}
        return self.dets[:MAX_CLASSIFIED_FRAME] if self.results else self.dets


@dataclass(eq=False)
class CropRef:
    """A crop work item's context."""

    hold: FrameHold
    index: int  # the detection's position in the frame's list
    model: str
    object_id: str | None


class SecondaryStage:
    def __init__(self, submit: Callable[[WorkItem], bool], models: dict[str, ServedModel], wait_s: float):
        self.submit, self.models, self.wait_s = submit, models, wait_s
        self.deliver: Callable[[tuple], None] = lambda entry: None  # set by the sink: its queue
        self._open: list[FrameHold] = []

    # -- on the sink's thread ------------------------------------------------------------
    def plan(self, ref: FrameRef, detector: str, dets: list[dict], tracker: Tracker, hold: FrameHold) -> None:
        """Submit the crops of ``dets`` (sorted by score); ``hold.outstanding`` counts them."""
        rt, frame = ref.runtime, ref.frame
        specs = [s for s in rt.cam.secondaries(detector) if s.model in self.models]
        if not specs:
            return
        per_spec: dict[str, int] = {}
        classified = 0
        for i, det in enumerate(dets):
            if classified >= MAX_CROPS:
                break
            wanted = [s for s in specs if det["label"] in s.labels and per_spec.get(s.model, 0) < s.max_crops]
            if not wanted:
                continue
            w, h = box_px(det["box"], frame.width, frame.height)
            wanted_big = [s for s in wanted if min(w, h) >= s.min_box_px]
            if len(wanted_big) < len(wanted):
                rt.count_crop("too_small", len(wanted) - len(wanted_big))
            if not wanted_big:
                continue
            classified += 1
            for spec in wanted_big:
                per_spec[spec.model] = per_spec.get(spec.model, 0) + 1
                crop = CropRef(hold, i, spec.model, tracker.assigned.get(id(det)))
                item = WorkItem(f"{rt.name}:{frame.seq}:{i}:{spec.model}", (spec.model,), {"camera": rt.name},
                                _prepare(ref, det["box"], spec), self, group=rt.name, live=True, context=crop)
                hold.outstanding += 1
                hold.planned += 1
                if not self.submit(item):  # the pipeline is stopping
                    hold.outstanding -= 1
        if hold.outstanding:
            self._open.append(hold)

    def settle(self, item: WorkItem, outcome: Any, trackers: dict[str, Tracker]) -> FrameHold | None:
        """One crop's outcome (a Completion, ``"dropped"`` or ``"failed"``); returns its hold
        when that was the hold's last open crop."""
        crop: CropRef = item.context
        hold, rt = crop.hold, crop.hold.runtime
        if outcome == "dropped":
            rt.count_drop("secondary")
        elif outcome == "failed" or outcome.error is not None or outcome.outputs is None:
            rt.count_crop("failed")
        else:
            manifest = self.models[crop.model].manifest
            (scores,) = decode_one(manifest.decoded_outputs, outcome.outputs).values()
            rt.count_crop("classified")
            tracker = trackers.get(hold.detector)
            obj = tracker.objects.get(crop.object_id) if tracker is not None and crop.object_id else None
            if obj is not None:
                obj.classified(crop.model, scores)
            if hold.done:
                rt.count_crop("late")
            else:
                hold.results.setdefault(crop.index, {})[crop.model] = scores
        hold.outstanding -= 1
        if hold.outstanding == 0 and not hold.done:
            return self._close(hold)
        return None

    def due(self, now: float, every: bool = False) -> list[FrameHold]:
        """Holds whose wait is over (all of them with ``every``), closed."""
        return [self._close(h) for h in list(self._open) if every or now >= h.deadline]

    def next_deadline(self) -> float | None:
        return min((h.deadline for h in self._open), default=None)

    def _close(self, hold: FrameHold) -> FrameHold:
        hold.done = True
        if hold in self._open:
            self._open.remove(hold)
        return hold

    # -- the pipeline's Sink protocol (batcher and preprocess threads) --------------------
    def completed(self, item: WorkItem, model: Any, completion: Any, pre: dict[str, float], last: bool,
                  incomplete: bool) -> None:
        self.deliver(("crop", item, completion))

    def failed(self, item: WorkItem, reason: str, detail: str, transient: bool) -> None:
        self.deliver(("crop", item, "failed"))

    def dropped(self, item: WorkItem, model: Any) -> None:
        self.deliver(("crop", item, "dropped"))


def _prepare(ref: FrameRef, box: list[float], spec: SecondarySpec) -> Callable[[Any], Prepared]:
    def prepare(manifest: Any) -> Prepared:
        return prepare_crop(ref.frame.pixels, box, manifest.input, manifest.preprocess, spec.crop, spec.margin)
    return prepare
