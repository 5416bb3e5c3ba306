"""A camera's model entries: a model by name, or a detector with its secondary classifiers.

A secondary classifier (DeepStream calls it an SGIE) classifies a crop of every detection of the
labels it names: ``crop`` says how the box becomes the classifier's input (its size comes from the
classifier's own manifest), ``margin`` widens the box first, and boxes smaller than
``min_box_px`` (the shorter side, in pixels of the frame the detector saw) are not classified.
What needs manifests (the classifier is a classifier, the labels are the detector's) is checked by
:mod:`edged.sources.camera.secondary_check` in ``edged check`` and at start; the shape of the
configuration is checked here, with file, line and key like the rest of the file.

Caps that keep a frame's detections message provably under its size cap
(:data:`edged.mqtt.messages.MAX_BYTES`): at most :data:`MAX_PER_LABEL` classifiers apply to any one
detector label, at most :data:`MAX_CROPS` detections of a frame are classified (the highest
scores), a frame message carries at most :data:`MAX_FRAME_LABELS` labels per classifier, and a
frame message with any classified detection at most :data:`MAX_CLASSIFIED_FRAME` detections.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_PER_LABEL = 2
MAX_CROPS = 16
MAX_FRAME_LABELS = 4
MAX_CLASSIFIED_FRAME = 64  # detections in a frame message that carries secondary results
MAX_LABELS = 16  # a secondary classifier's labels (object events carry every one)
LABEL_PATTERN = r"^[A-Za-z0-9_ .-]{1,32}$"


class SecondarySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", description="a classifier in models:")
    labels: tuple[str, ...] = Field(min_length=1, max_length=16, description="detector labels it applies to")
    crop: Literal["square", "letterbox", "stretch"] = Field(
        default="square", description="square around the box (with margin) | letterbox the box | stretch the box")
    margin: float = Field(default=0.2, ge=0, le=2, description="the box is widened by this fraction per side")
    min_box_px: int = Field(default=32, ge=1, le=4096, description="shorter box side in frame pixels")
    max_crops: int = Field(default=MAX_CROPS, ge=1, le=MAX_CROPS, description="per frame: the highest scores")

    @model_validator(mode="after")
    def _unique(self) -> "SecondarySpec":
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("a label is listed twice")
        return self


class CameraModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    secondary: tuple[SecondarySpec, ...] = Field(default=(), max_length=4)

    @model_validator(mode="after")
    def _per_label(self) -> "CameraModel":
        names = [s.model for s in self.secondary]
        if len(set(names)) != len(names):
            raise ValueError(f"secondary model listed twice for {self.name}")
        if self.name in names:
            raise ValueError(f"{self.name} cannot be its own secondary")
        for label in {label for s in self.secondary for label in s.labels}:
            n = sum(label in s.labels for s in self.secondary)
            if n > MAX_PER_LABEL:
                raise ValueError(f"label {label}: {n} secondary classifiers, at most {MAX_PER_LABEL} per label "
                                 "(the detections message stays under its size cap)")
        return self


def secondary_problems(cameras: list, manifests: dict, where=lambda key, loc: key) -> list[str]:
    """What the manifests say against the cameras' secondary classifiers, one line each with the
    config key: a detector that does not detect, a label the detector does not have, a secondary
    that is not a classifier (one score output, at most :data:`MAX_LABELS` short labels) or does not
    serve cameras. ``manifests`` maps model names to their manifests (missing ones are reported
    elsewhere); ``where(key, loc)`` prefixes the file and line. ``edged check`` and ``edged run`` both
    report these (exit 2)."""
    import re

    from edged.postprocess.decode import kind_of

    problems = []
    for i, cam in enumerate(cameras):
        for j, entry in enumerate(cam.models):
            det = manifests.get(entry.name)
            if not entry.secondary or det is None:
                continue
            at = ("cameras", i, "models", j)
            prefix = f"cameras[{i}].models[{j}]"
            found = [o for o in det.decoded_outputs if kind_of(o) == "detections"]
            if not found:
                problems.append(f"{where(prefix + '.name', (*at, 'name'))}: {entry.name} has secondary classifiers "
                                "but is not a detector (none of its outputs decodes to detections)")
                continue
            known = {label for o in found for label in o.labels}
            for k, sec in enumerate(entry.secondary):
                key = f"{prefix}.secondary[{k}]"
                sat = (*at, "secondary", k)
                unknown = [label for label in sec.labels if label not in known]
                if unknown:
                    problems.append(f"{where(key + '.labels', (*sat, 'labels'))}: {', '.join(unknown)} not a label of "
                                    f"{entry.name} (it has: {', '.join(sorted(known))})")
                at_model = where(key + ".model", (*sat, "model"))
                m = manifests.get(sec.model)
                if m is None:
                    continue
                if "camera" not in m.sources:
                    problems.append(f"{at_model}: {sec.model}'s manifest does not list camera in its sources")
                outs = m.decoded_outputs
                if len(outs) != 1 or kind_of(outs[0]) != "scores":
                    kinds = ", ".join(f"{o.name} ({kind_of(o)})" for o in outs)
                    problems.append(f"{at_model}: {sec.model} is not a classifier: a secondary model has exactly "
                                    f"one score output (sigmoid, softmax or none); it has {kinds}")
                    continue
                labels = outs[0].labels
                bad = [label for label in labels if not re.match(LABEL_PATTERN, label)]
                if len(labels) > MAX_LABELS or bad:
                    problems.append(f"{at_model}: {sec.model}: a secondary classifier has at most {MAX_LABELS} "
                                    f"labels of 1-32 characters [A-Za-z0-9_ .-]"
                                    + (f" ({', '.join(bad[:3])})" if bad else f" (it has {len(labels)})"))
    return problems
