"""Which configured cameras can be opened here: the ``cameras`` group of ``edged selftest``.

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


ELEMENTS = ("nvarguscamerasrc", "nvv4l2decoder", "nvvidconv", "v4l2src", "rtspsrc", "avdec_h264")


def camera_rows(cfg: Config) -> list[dict]:
    """Self-test rows (group ``cameras``): the helper's Python and GStreamer with the nv* elements it
    finds, then each configured camera PASS (a frame came), FAIL (why not) or SKIP (disabled)."""
    cap = cfg.capture
    probe = probe_helper(str(cap.python))
    if probe.get("error"):
        return [{"group": "cameras", "target": "capture helper", "status": "FAIL" if cfg.cameras else "SKIP",
                 "note": f"{cap.python} cannot run it: {probe['error']}"[:300]}]
    found = probe.get("elements") or {}
    nv = ", ".join(f"{name} {'yes' if found.get(name) else 'no'}" for name in ELEMENTS)
    rows = [{"group": "cameras", "target": "capture helper", "status": "PASS",
             "note": f"Python {probe.get('python')}, {probe.get('gstreamer')}; {nv}",
             "data": {"elements": found, "python": probe.get("python"), "gstreamer": probe.get("gstreamer")}}]
    for cam in cfg.cameras:
        if not cam.enabled:
            rows.append({"group": "cameras", "target": cam.name, "status": "SKIP", "note": "disabled"})
            continue
        ok, detail = open_camera(cam, cap.python, found, cap.decoder)
        rows.append({"group": "cameras", "target": cam.name, "status": "PASS" if ok else "FAIL",
                     "note": f"{cam.scheme}: {detail}", "data": {"scheme": cam.scheme}})
    return rows
