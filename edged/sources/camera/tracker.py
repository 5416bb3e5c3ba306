"""Stable object ids across frames, and the new/update/end events of the Frigate pattern.

Per camera and model, each detection is matched to the live object of the same label it overlaps
most (IoU ≥ ``match_iou``, greedy by score); unmatched detections become candidate objects. A
candidate seen in ``min_frames`` frames is ``new`` (one-frame flickers of a detector never reach
the durable event stream); an object unseen for ``timeout_s`` ends (``end`` only for objects that
were announced). ``update`` is reported at most once per ``update_s`` per object,
and only when it says something new (its best score rose, it moved by more than a tenth of
the frame, or a secondary classifier's top label changed): durable events are for changes, the
volatile detections stream is for every frame.

Secondary classifier results attach to objects (:meth:`TrackedObject.classified`): per classifier,
the mean of its scores over the crops of that object classified so far, and how many crops that is.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from edged.postprocess.detection import iou


@dataclass
class TrackedObject:
    id: str
    label: str
    box: list[float]
    score: float
    top_score: float
    first_seen: float  # wall clock
    last_seen: float
    frames: int = 1
    reported_box: list[float] = field(default_factory=list)
    reported_top: float = 0.0
    reported_at: float = 0.0
    confirmed: bool = False
    secondary: dict[str, tuple[dict[str, float], int]] = field(default_factory=dict)  # model -> (score sums, crops)
    reported_tops: dict[str, str] = field(default_factory=dict)

    def classified(self, model: str, scores: dict[str, float]) -> None:
        """One more crop of this object classified by ``model``."""
        sums, n = self.secondary.get(model, ({}, 0))
        self.secondary[model] = ({k: sums.get(k, 0.0) + v for k, v in scores.items()}, n + 1)

    def secondary_summary(self) -> dict[str, dict]:
        return {m: {"scores": {k: round(v / n, 4) for k, v in sums.items()}, "crops": n}
                for m, (sums, n) in self.secondary.items()}

    def tops(self) -> dict[str, str]:
        return {m: max(sums, key=sums.__getitem__) for m, (sums, _) in self.secondary.items() if sums}

    def summary(self) -> dict:
        out = {"id": self.id, "label": self.label, "score": round(self.score, 4), "top_score": round(self.top_score, 4),
               "box": self.box, "first_seen": round(self.first_seen, 3), "last_seen": round(self.last_seen, 3),
               "frames": self.frames}
        if self.secondary:
            out["secondary"] = self.secondary_summary()
        return out


class Tracker:
    def __init__(self, timeout_s: float = 2.0, update_s: float = 5.0, match_iou: float = 0.3, max_objects: int = 200,
                 min_frames: int = 2):
        self.timeout_s, self.update_s, self.match_iou, self.max_objects = timeout_s, update_s, match_iou, max_objects
        self.min_frames = min_frames
        self.objects: dict[str, TrackedObject] = {}
        self.assigned: dict[int, str] = {}  # id() of each detection dict of the last update -> its object
    def update(self, detections: list[dict], now: float) -> list[tuple[str, TrackedObject]]:
        """Assign ``detection["object"]`` ids; returns the (event, object) pairs this frame causes."""
        events: list[tuple[str, TrackedObject]] = []
        self.assigned = {}
        free = dict(self.objects)
        for det in sorted(detections, key=lambda d: -d["score"]):
            best, best_iou = None, self.match_iou
            for obj in free.values():
                if obj.label == det["label"]:
                    overlap = iou(obj.box, det["box"])
                    if overlap >= best_iou:
                        best, best_iou = obj, overlap
            if best is None:
                if len(self.objects) >= self.max_objects:
                    continue  # a noisy model must not grow this without bound
                obj = TrackedObject(uuid.uuid4().hex, det["label"], det["box"], det["score"], det["score"], now, now)
                self.objects[obj.id] = obj
            else:
                del free[best.id]
                obj = best
                obj.box, obj.score, obj.last_seen = det["box"], det["score"], now
                obj.top_score = max(obj.top_score, det["score"])
                obj.frames += 1
            self.assigned[id(det)] = obj.id
            if not obj.confirmed and obj.frames >= self.min_frames:
                obj.confirmed = True
                obj.reported_box, obj.reported_top, obj.reported_at = obj.box, obj.top_score, now
                obj.reported_tops = obj.tops()
                events.append(("new", obj))
            elif obj.confirmed and now - obj.reported_at >= self.update_s:
                moved = max(abs(a - b) for a, b in zip(obj.box, obj.reported_box)) > 0.1
                if moved or obj.top_score > obj.reported_top + 0.05 or obj.tops() != obj.reported_tops:
                    obj.reported_box, obj.reported_top, obj.reported_at = obj.box, obj.top_score, now
                    obj.reported_tops = obj.tops()
                    events.append(("update", obj))
            if obj.confirmed:
                det["object"] = obj.id
        return events + self.expire(now)

    def expire(self, now: float) -> list[tuple[str, TrackedObject]]:
        ended = [o for o in self.objects.values() if now - o.last_seen > self.timeout_s]
        for o in ended:
            del self.objects[o.id]
        return [("end", o) for o in ended if o.confirmed]

    def end_all(self) -> list[tuple[str, TrackedObject]]:
        ended = [o for o in self.objects.values() if o.confirmed]
        self.objects.clear()
        return [("end", o) for o in ended]
