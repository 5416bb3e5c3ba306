"""One camera frame → one model input tensor: resize or letterbox, colour order, normalization.

Frames arrive as RGB uint8 (H, W, 3) from the capture helper, already scaled and rate-limited by
GStreamer; what is left is the model's own geometry and normalization. The frame is resized once
(area when shrinking, linear otherwise, or as the manifest says), placed centred in a black
canvas when ``keep_aspect`` (the letterbox the detection decoders undo, see
:mod:`edged.preprocess.geometry`), put in the model's channel order, and normalized as
``(x · pixel_range / 255 − mean) / std`` in one multiply-add per channel.
"""

from __future__ import annotations

from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edged.preprocess.errors import PixelError
from edged.preprocess.geometry import Letterbox, letterbox

if TYPE_CHECKING:
    from edged.models.manifest import InputSpec, PreprocessSpec


def geometry_for(frame_w: int, frame_h: int, spec: InputSpec, pp: PreprocessSpec) -> Letterbox:
    return letterbox(frame_w, frame_h, spec.width, spec.height, pp.keep_aspect)


def prepare_frame(frame: np.ndarray, spec: InputSpec, pp: PreprocessSpec) -> tuple[np.ndarray, dict[str, float]]:
    """The model input for an RGB uint8 frame: (C, H, W) for NCHW or (H, W, C) for NHWC, no batch
    axis, plus ``{"decode_ms", "transform_ms"}`` (decoding happened in the capture helper: 0)."""
    t0 = perf_counter()
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or 0 in frame.shape:
        raise PixelError("bad_frame", f"expected an RGB uint8 frame, got {frame.dtype} {frame.shape}")
    geo = geometry_for(frame.shape[1], frame.shape[0], spec, pp)
    image = frame
    if (geo.inner_w, geo.inner_h) != (frame.shape[1], frame.shape[0]):
        shrinking = geo.inner_w < frame.shape[1] and geo.inner_h < frame.shape[0]
        method = cv2.INTER_AREA if pp.resize == "area" and shrinking else cv2.INTER_LINEAR
        image = cv2.resize(frame, (geo.inner_w, geo.inner_h), interpolation=method)
    if spec.channels == 1:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., np.newaxis]
    elif pp.color == "bgr":
        image = image[..., ::-1]
    if (geo.inner_w, geo.inner_h) != (geo.input_w, geo.input_h):
        canvas = np.zeros((geo.input_h, geo.input_w, image.shape[2]), dtype=np.uint8)
        canvas[geo.pad_y:geo.pad_y + geo.inner_h, geo.pad_x:geo.pad_x + geo.inner_w] = image
        image = canvas
    tensor = normalize(image, spec, pp)
    return tensor, {"decode_ms": 0.0, "transform_ms": (perf_counter() - t0) * 1000.0}


def normalize(image: np.ndarray, spec: InputSpec, pp: PreprocessSpec) -> np.ndarray:
    """uint8 (H, W, C) → the model's layout and dtype, ``(x · range / 255 − mean) / std``."""
    c = spec.channels
    mean = np.broadcast_to(np.asarray(pp.mean, dtype=np.float32), (c,))
    std = np.broadcast_to(np.asarray(pp.std, dtype=np.float32), (c,))
    gain = np.float32(pp.pixel_range) / np.float32(255.0) / std
    nchw = spec.layout == "NCHW"
    out = np.empty((c, *image.shape[:2]) if nchw else (*image.shape[:2], c), np.float32)
    for ch in range(c):
        plane = out[ch] if nchw else out[..., ch]
        np.multiply(image[..., ch], gain[ch], out=plane, casting="unsafe")
        np.subtract(plane, mean[ch] / std[ch], out=plane)
    return out.astype(spec.dtype, copy=False)


def read_image(path: Path) -> np.ndarray:
    """An image file (PNG, JPEG…) as an RGB uint8 frame: validation sets of camera models."""
    data = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if data is None:
        raise PixelError("unreadable", f"{Path(path).name} is not an image OpenCV can read")
    return cv2.cvtColor(data, cv2.COLOR_BGR2RGB)
