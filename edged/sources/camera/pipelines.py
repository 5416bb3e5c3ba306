"""A camera URI → the GStreamer pipeline description the capture helper runs.

The only difference between a Jetson and any other Linux machine is this string: ``csi://N``
is ``nvarguscamerasrc`` with NVMM caps and ``nvvidconv``; RTSP decodes with ``nvv4l2decoder``
where it exists (``capture.decoder: auto``) and with ``avdec_h264``/``avdec_h265`` elsewhere;
``v4l2://`` is ``v4l2src`` (raw or MJPEG); ``file://`` is ``filesrc ! decodebin`` played in real
time (a still image is repeated by ``imagefreeze``; ``?loop=1`` loops a video); ``test://PATTERN``
is ``videotestsrc is-live=true``. Scaling and rate limiting happen here, in GStreamer
(``videoscale``/``nvvidconv``, ``videorate drop-only=true max-rate=…``), not in Python.

Every description ends in RGB at the configured size; the helper appends the appsink. Nothing
secret is ever part of a description: RTSP credentials are set on the element named ``src``.
"""

from __future__ import annotations

import math
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from edged.sources.camera.config import CameraConfig

STILL_IMAGES = (".png", ".jpg", ".jpeg", ".bmp")


def delivery_rate(cam: CameraConfig) -> int:
    """Frames per second the helper delivers: twice the inference rate, so the scheduler always
    finds a frame younger than one inference period (the surplus is counted as reader drops)."""
    return max(1, math.ceil(2 * cam.fps))


def _tail(cam: CameraConfig, rate: bool = True) -> str:
    size = f",width={cam.width},height={cam.height},pixel-aspect-ratio=1/1" if cam.width else ""
    limit = f"videorate drop-only=true max-rate={delivery_rate(cam)} ! " if rate else ""
    return f"{limit}videoconvert ! videoscale add-borders=false ! video/x-raw,format=RGB{size}"


def hardware_decode(elements: dict[str, bool], choice: str) -> bool:
    if choice == "software":
        return False
    if choice == "nvv4l2":
        return True
    return bool(elements.get("nvv4l2decoder") and elements.get("nvvidconv"))


def describe(cam: CameraConfig, elements: dict[str, bool] | None = None, decoder: str = "auto") -> str:
    """The pipeline for ``cam`` given the helper's probe (which elements exist there)."""
    elements = elements or {}
    parts = urlsplit(cam.uri)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    scheme = parts.scheme
    if scheme in ("rtsp", "rtsps"):
        location = cam.uri
        depay, parse = ("rtph265depay", "h265parse") if cam.codec == "h265" else ("rtph264depay", "h264parse")
        if hardware_decode(elements, decoder):
            decode = "nvv4l2decoder enable-max-performance=1 ! nvvidconv ! video/x-raw,format=BGRx"
        else:
            decode = "avdec_h265" if cam.codec == "h265" else "avdec_h264"
        return (f'rtspsrc name=src location="{location}" latency={cam.latency_ms} protocols=tcp '
                f"! {depay} ! {parse} ! {decode} ! {_tail(cam)}")
    if scheme == "csi":
        width, height = cam.width or 1280, cam.height or 720
        return (f"nvarguscamerasrc name=src sensor-id={int(parts.netloc)} "
                f"! video/x-raw(memory:NVMM),width={width},height={height},framerate={cam.source_fps}/1,format=NV12 "
                f"! nvvidconv flip-method={cam.flip} ! video/x-raw,format=BGRx ! {_tail(cam)}")
    if scheme == "v4l2":
        device = unquote(parts.path)
        if query.get("format") == "mjpeg":
            return (f"v4l2src name=src device={device} ! image/jpeg,framerate={cam.source_fps}/1 ! jpegdec "
                    f"! {_tail(cam)}")
        return f"v4l2src name=src device={device} ! video/x-raw,framerate={cam.source_fps}/1 ! {_tail(cam)}"
    if scheme == "file":
        path = unquote(parts.path)
        if Path(path).suffix.lower() in STILL_IMAGES:
            return (f'filesrc name=src location="{path}" ! decodebin ! imagefreeze is-live=true '
                    f"! {_tail(cam, rate=False)},framerate={delivery_rate(cam)}/1")
        return f'filesrc name=src location="{path}" ! decodebin ! identity sync=true ! {_tail(cam)}'
    if scheme == "test":
        width, height = cam.width or 640, cam.height or 360
        return (f"videotestsrc name=src is-live=true pattern={parts.netloc or 'smpte'} "
                f"! video/x-raw,width={width},height={height},framerate={cam.source_fps}/1 ! {_tail(cam)}")
    raise ValueError(f"camera {cam.name}: no pipeline for {scheme}://")


def loops(cam: CameraConfig) -> bool:
    """Whether the helper seeks back to the start at end of stream (``file://…?loop=1``)."""
    parts = urlsplit(cam.uri)
    return parts.scheme == "file" and parse_qs(parts.query).get("loop", ["0"])[-1] in ("1", "true", "yes")


def source_label(cam: CameraConfig) -> str:
    """What payloads may say about a camera's source: its kind, never its address or path."""
    return cam.scheme.replace("rtsps", "rtsp")
