"""Optional local snapshots of inferred frames, with every face redacted before the disk sees it.

Off by default (``capture.snapshots.enabled``). Only cameras that run the redaction model
(``capture.snapshots.redact_model``, a face detector such as ``centerface``) get snapshots, and a
snapshot is written only from a frame that model has just inferred, with each face it found
(inside the ROI or not) blurred beyond recognition, enlarged by a margin, before encoding. A frame
the face model failed on is never written. Files stay on the device (``<state_dir>/snapshots``,
mode 0640 under the service's umask); nothing here publishes anything. The newest ``keep`` per
camera are kept.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from edged.sources.camera.runtime import CameraRuntime, FrameRef

log = logging.getLogger("edged.camera")
MARGIN = 0.25  # each side of a face box grows by this fraction of its size


def redact(pixels: np.ndarray, faces: list[dict]) -> np.ndarray:
    """An RGB copy of ``pixels`` with every face box (normalized) pixelated and blurred."""
    out = np.array(pixels, copy=True)
    h, w = out.shape[:2]
    for face in faces:
        x0, y0, x1, y1 = face["box"]
        mx, my = (x1 - x0) * MARGIN, (y1 - y0) * MARGIN
        a, b = max(0, int((x0 - mx) * w)), max(0, int((y0 - my) * h))
        c, d = min(w, int(np.ceil((x1 + mx) * w))), min(h, int(np.ceil((y1 + my) * h)))
        if c - a < 2 or d - b < 2:
            continue
        region = out[b:d, a:c]
        small = cv2.resize(region, (max(1, (c - a) // 16), max(1, (d - b) // 16)), interpolation=cv2.INTER_AREA)
        out[b:d, a:c] = cv2.GaussianBlur(cv2.resize(small, (c - a, d - b), interpolation=cv2.INTER_NEAREST), (0, 0), 3)
    return out


class SnapshotWriter:
    def __init__(self, folder: Path, interval_s: float, keep: int, redact_model: str):
        self.folder, self.interval_s, self.keep, self.redact_model = Path(folder), interval_s, keep, redact_model
        self.written = 0

    def wanted(self, rt: CameraRuntime) -> bool:
        """Keep this frame's pixels for a snapshot? (the camera runs the face model and one is due)"""
        now = time.monotonic()
        if self.redact_model not in rt.models or now < rt.snapshot_due:
            return False
        rt.snapshot_due = now + self.interval_s
        return True

    def __call__(self, ref: FrameRef, faces: list[dict]) -> None:
        try:
            image = redact(ref.frame.pixels, faces)
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
            if not ok:
                return
            folder = self.folder / ref.runtime.name
            folder.mkdir(parents=True, exist_ok=True, mode=0o750)
            stamp = datetime.fromtimestamp(ref.frame.captured, timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            path = folder / f"{stamp}.jpg"
            tmp = path.with_suffix(".part")
            tmp.write_bytes(jpeg.tobytes())
            os.replace(tmp, path)
            self.written += 1
            for old in sorted(folder.glob("*.jpg"))[:-self.keep]:
                old.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("camera %s: snapshot not written (%s)", ref.runtime.name, exc.strerror)
