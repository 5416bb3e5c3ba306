"""Which configured cameras can be opened here: for ``edged selftest`` on a device.

CI has no CSI sensor, no ``/dev/video*`` and no NVDEC; a technician on a Jetson needs to know, in
one command, whether the helper's Python has GStreamer and the nv* elements and whether each
camera of the config delivers a frame. Each camera is opened by the real capture helper with the
pipeline the daemon would run, until its first frame or ``timeout`` s.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from edged.config.schema import Config
from edged.sources.camera import helper as proto
from edged.sources.camera.capture import HELPER
from edged.sources.camera.config import CameraConfig
from edged.sources.camera.pipelines import describe, loops
from edged.sources.camera.source import probe_helper


def open_camera(cam: CameraConfig, python: Path, elements: dict, decoder: str, timeout: float = 15.0) -> tuple[bool, str]:
    """(opened, what happened): the first frame's size and decoder, or why it did not come."""
    user = password = None
    if cam.username_file and cam.password_file:
        user, password = (Path(p).read_text(encoding="utf-8").strip() for p in (cam.username_file, cam.password_file))
    cfg = {"description": describe(cam, elements, decoder), "stall_timeout_s": timeout, "first_frame_timeout_s": timeout,
           "loop": loops(cam), "username": user, "password": password}
    proc = subprocess.Popen([str(python), str(HELPER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    proc.stdin.write((json.dumps(cfg) + "\n").encode())
    proc.stdin.close()
    started, decoders, error = time.monotonic(), "", ""
    try:
        while True:
            head = proc.stdout.read(proto.HEADER.size)
            if len(head) < proto.HEADER.size:
                break
            _, _, kind, _, _, _, _, width, height, _, size = proto.HEADER.unpack(head)
            data = proc.stdout.read(size)
            if kind == proto.KIND_INFO:
                decoders = ",".join(json.loads(data).get("decoders") or []) or "none"
            elif kind == proto.KIND_ERROR:
                error = str(json.loads(data).get("message"))
            elif kind == proto.KIND_FRAME:
                return True, f"{width}x{height} in {time.monotonic() - started:.1f} s, decoder {decoders}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    why = proto.EXIT_CODES.get(proc.returncode, f"exit {proc.returncode}")
    for secret in (password, user):
        if secret:
            error = error.replace(secret, "[redacted]")
    return False, f"{why}: {error}"[:200]


def report(cfg: Config, out=print) -> int:
    """Print the helper's Python and GStreamer, the nv* elements, and each camera: 1 if any fails."""
    cap = cfg.capture
    probe = probe_helper(str(cap.python))
    if probe.get("error"):
        out(f"cameras: {cap.python} cannot run the capture helper: {probe['error']}")
        return 1 if cfg.cameras else 0
    found = probe.get("elements") or {}
    nv = ", ".join(f"{name} {'yes' if found.get(name) else 'no'}" for name in
                   ("nvarguscamerasrc", "nvv4l2decoder", "nvvidconv", "v4l2src", "rtspsrc", "avdec_h264"))
    out(f"cameras: helper on Python {probe.get('python')}, {probe.get('gstreamer')}; {nv}")
    failed = 0
    for cam in cfg.cameras:
        if not cam.enabled:
            out(f"  {cam.name:<20} SKIP  disabled")
            continue
        ok, detail = open_camera(cam, cap.python, found, cap.decoder)
        failed += not ok
        out(f"  {cam.name:<20} {'PASS' if ok else 'FAIL'}  {cam.scheme}: {detail}")
    return 1 if failed else 0
