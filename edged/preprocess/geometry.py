"""Where a frame sits inside a model's input: the letterbox (or stretch) both ways.

Preprocessing places the frame in the input tensor (scaled, centred, padded); detection decoding
must undo exactly that to report boxes normalized to the frame. One small value object computed
by one function serves both, so the two can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Letterbox:
    frame_w: int
    frame_h: int
    input_w: int
    input_h: int
    scale_x: float  # input pixels per frame pixel
    scale_y: float
    pad_x: int  # input pixels left of the frame
    pad_y: int  # input pixels above the frame
    inner_w: int  # size of the scaled frame inside the input
    inner_h: int

    def to_frame(self, x: float, y: float) -> tuple[float, float]:
        """Input pixel coordinates → normalized frame coordinates (not clipped)."""
        return (x - self.pad_x) / self.scale_x / self.frame_w, (y - self.pad_y) / self.scale_y / self.frame_h


def letterbox(frame_w: int, frame_h: int, input_w: int, input_h: int, keep_aspect: bool = True) -> Letterbox:
    """The geometry that puts a ``frame_w``×``frame_h`` frame into an ``input_w``×``input_h`` input:
    scaled by one factor and centred (``keep_aspect``), or stretched to fill it."""
    if not keep_aspect:
        return Letterbox(frame_w, frame_h, input_w, input_h, input_w / frame_w, input_h / frame_h, 0, 0,
                         input_w, input_h)
    scale = min(input_w / frame_w, input_h / frame_h)
    inner_w = min(input_w, max(1, round(frame_w * scale)))
    inner_h = min(input_h, max(1, round(frame_h * scale)))
    pad_x, pad_y = (input_w - inner_w) // 2, (input_h - inner_h) // 2
    return Letterbox(frame_w, frame_h, input_w, input_h, inner_w / frame_w, inner_h / frame_h, pad_x, pad_y,
                     inner_w, inner_h)


def identity(input_w: int, input_h: int) -> Letterbox:
    """The input itself as the frame (the accuracy gate, tools without a camera)."""
    return Letterbox(input_w, input_h, input_w, input_h, 1.0, 1.0, 0, 0, input_w, input_h)
