"""One detection → a secondary classifier's input tensor: cut from the frame the detector saw.

The crop is a numpy view into that frame whenever the region lies inside it (no copy of the frame
or of the crop is made before the one resize that produces the model's input); only a square that
reaches past the frame's edge is padded, by copying just the crop. The classifier's own manifest
decides size, colour order and normalization, exactly as for a whole frame
(:func:`edged.preprocess.frames.prepare_frame`); the crop policy decides the region and its shape:

* ``square``: a square around the box's centre, side = the longer box side widened by ``margin``
  on each side, black beyond the frame (faces keep their proportions and some context);
* ``letterbox``: the box widened by ``margin`` (clipped to the frame), scaled with its aspect kept
  and centred on black;
* ``stretch``: the box widened by ``margin`` (clipped), stretched to the input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from edged.preprocess.frames import prepare_frame

if TYPE_CHECKING:
    from edged.models.manifest import InputSpec, PreprocessSpec


def box_px(box: list[float], frame_w: int, frame_h: int) -> tuple[float, float]:
    """A normalized box's width and height in frame pixels."""
    return (box[2] - box[0]) * frame_w, (box[3] - box[1]) * frame_h


def region(box: list[float], frame_w: int, frame_h: int, policy: str, margin: float) -> tuple[int, int, int, int]:
    """The crop's pixel region ``(x0, y0, x1, y1)``; only ``square`` may reach outside the frame."""
    w, h = box_px(box, frame_w, frame_h)
    cx, cy = (box[0] + box[2]) / 2 * frame_w, (box[1] + box[3]) / 2 * frame_h
    if policy == "square":
        half = max(w, h) * (1 + 2 * margin) / 2
        half_w = half_h = max(half, 0.5)
    else:
        half_w, half_h = max(w * (1 + 2 * margin) / 2, 0.5), max(h * (1 + 2 * margin) / 2, 0.5)
    x0, y0 = int(round(cx - half_w)), int(round(cy - half_h))
    x1, y1 = max(x0 + 1, int(round(cx + half_w))), max(y0 + 1, int(round(cy + half_h)))
    if policy != "square":
        x0, y0 = min(max(0, x0), frame_w - 1), min(max(0, y0), frame_h - 1)
        x1, y1 = max(x0 + 1, min(x1, frame_w)), max(y0 + 1, min(y1, frame_h))
    return x0, y0, x1, y1


def cut(frame: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """``frame[y0:y1, x0:x1]``: a view when inside the frame, else a black-padded copy of the crop."""
    h, w = frame.shape[:2]
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if cx1 <= cx0 or cy1 <= cy0:
        return np.zeros((y1 - y0, x1 - x0, frame.shape[2]), frame.dtype)
    inner = frame[cy0:cy1, cx0:cx1]
    if (cx0, cy0, cx1, cy1) == (x0, y0, x1, y1):
        return inner
    return cv2.copyMakeBorder(inner, cy0 - y0, y1 - cy1, cx0 - x0, x1 - cx1, cv2.BORDER_CONSTANT, value=(0, 0, 0))


def prepare_crop(frame: np.ndarray, box: list[float], spec: InputSpec, pp: PreprocessSpec, policy: str,
                 margin: float) -> tuple[np.ndarray, dict[str, float]]:
    """The classifier input for one normalized ``box`` of an RGB uint8 ``frame`` (as prepare_frame)."""
    x0, y0, x1, y1 = region(box, frame.shape[1], frame.shape[0], policy, margin)
    crop = cut(frame, x0, y0, x1, y1)
    return prepare_frame(crop, spec, pp.model_copy(update={"keep_aspect": policy == "letterbox"}))
