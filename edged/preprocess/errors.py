"""The one exception the pixel pipeline raises for bad input.

It lives in its own module so the LUT maths (:mod:`luts`) and the pipeline (:mod:`pixels`) can
both raise it without importing each other.
"""

from __future__ import annotations


class PixelError(ValueError):
    """The dataset's pixels cannot become a tensor.

    ``reason`` is a short machine-readable code the daemon can count and report (``no_pixel_data``,
    ``multi_frame``, ``unsupported_photometric``, ``decode_failed``, ``too_large``,
    ``bad_dimensions``, ``unsupported_bits``, ``bad_lut``). The message is for humans and, by
    construction, never carries tag values that could identify a patient or study: only sizes,
    photometric interpretation, bit depths and transfer-syntax names.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message

    def __reduce__(self):  # keep reason/message intact across process boundaries (pickle)
        return (type(self), (self.reason, self.message))


class TransientError(RuntimeError):
    """Preparing the image failed for a reason that may not recur (a decoder process that died,
    memory that was short): the source retries it, within its attempt limit."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
