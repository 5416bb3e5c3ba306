"""Capture helper: one camera, one process, on the system Python (3.6+) with python3-gi.

Why a separate process on another interpreter: JetPack's GStreamer bindings (python3-gi) and
its nv* plugins (nvarguscamerasrc, nvv4l2decoder, nvvidconv) belong to the system Python (3.6
on JetPack 4.6, 3.8 on 5, 3.10 on 6) while the daemon runs in its own venv; and a camera whose
driver or decoder hangs or crashes takes only this process down. The daemon starts it as a
script (``python3 helper.py``), never imports it, and it imports nothing of edged: this file is
kept to Python 3.6 syntax and the standard library plus ``gi``.

Protocol. stdin carries one JSON line, then is closed::

    {"description": "<gst-launch pipeline without the sink>", "stall_timeout_s": 5,
     "first_frame_timeout_s": 20, "loop": false, "username": null, "password": null}

Credentials go to the element named ``src`` (``user-id``/``user-pw`` of rtspsrc), never into
the description, the command line or any output. stdout carries records, each a 48-byte header
(:data:`HEADER`) and ``size`` payload bytes: kind 1 a frame (RGB, ``stride`` bytes per row),
kind 2 an info JSON (caps, decoder), kind 3 an error JSON. The header has the frame sequence
number, the buffer PTS (ns, -1 if none) and the capture time on the wall clock: the pipeline
clock's time of the buffer's timestamp (for a live source the moment it entered the pipeline;
for RTSP the arrival of its first packet), or the time it was pulled when that is unknown.

The sink is ``appsink drop=true max-buffers=1 sync=false``: GStreamer itself keeps only the
newest frame, so a slow reader never backs the camera up. Exit codes (:data:`EXIT_CODES`) say
why the helper ended: 10 pipeline error, 11 end of stream, 12 no frame for ``stall_timeout_s``,
13 bad setup (GStreamer missing, bad description), 14 the daemon closed the pipe; 0 on SIGTERM.
``--probe`` prints the Python/GStreamer versions and which elements exist, as JSON.
"""

import json
import os
import signal
import struct
import sys
import time

MAGIC = b"EDGF"
VERSION = 1
# magic, version, kind, reserved, seq, pts_ns, captured (unix s), width, height, stride, size
HEADER = struct.Struct("<4sBBHQqdIIII")
KIND_FRAME, KIND_INFO, KIND_ERROR = 1, 2, 3
EXIT_OK, EXIT_ERROR, EXIT_EOS, EXIT_STALL, EXIT_SETUP, EXIT_PIPE = 0, 10, 11, 12, 13, 14
EXIT_CODES = {EXIT_OK: "stopped", EXIT_ERROR: "error", EXIT_EOS: "end_of_stream", EXIT_STALL: "stall",
              EXIT_SETUP: "setup", EXIT_PIPE: "pipe_closed"}
SINK = " ! appsink name=edged_sink drop=true max-buffers=1 sync=false"
PROBE_ELEMENTS = ("nvarguscamerasrc", "nvv4l2decoder", "nvvidconv", "omxh264dec", "rtspsrc", "v4l2src",
                  "avdec_h264", "avdec_h265", "rtph264depay", "rtph265depay", "h264parse", "h265parse",
                  "jpegdec", "decodebin", "imagefreeze", "videotestsrc", "videorate", "videoscale", "videoconvert",
                  "appsink")

_stopping = []


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def send(kind, payload, seq=0, pts=-1, captured=0.0, width=0, height=0, stride=0):
    head = HEADER.pack(MAGIC, VERSION, kind, 0, seq, pts, captured, width, height, stride, len(payload))
    _write_all(1, head + payload if len(payload) < 65536 else head)
    if len(payload) >= 65536:
        _write_all(1, payload)


def send_json(kind, obj):
    send(kind, json.dumps(obj, sort_keys=True).encode("utf-8"))


def load_gst():
    import gi

    gi.require_version("Gst", "1.0")
    from gi.repository import Gst

    Gst.init(None)
    return Gst


def probe():
    out = {"python": "%d.%d.%d" % sys.version_info[:3], "gstreamer": None, "elements": {}}
    try:
        Gst = load_gst()
    except Exception as exc:  # no python3-gi, no typelib
        out["error"] = "%s: %s" % (type(exc).__name__, exc)
        print(json.dumps(out, sort_keys=True))
        return EXIT_SETUP
    out["gstreamer"] = Gst.version_string()
    out["elements"] = dict((name, Gst.ElementFactory.find(name) is not None) for name in PROBE_ELEMENTS)
    print(json.dumps(out, sort_keys=True))
    return EXIT_OK


def _decoders(Gst, pipeline):
    """Names of the decoder elements in the pipeline (what actually decodes: nvv4l2decoder...)."""
    names = []
    it = pipeline.iterate_recurse()
    while True:
        res, elem = it.next()
        if res != Gst.IteratorResult.OK:
            break
        factory = elem.get_factory()
        if factory is not None and "Decoder" in (factory.get_metadata("klass") or ""):
            names.append(factory.get_name())
    return sorted(set(names))


def _captured(pipeline, pts, Gst):
    """Wall-clock time of a buffer's timestamp, or now when the pipeline cannot say."""
    now = time.time()
    clock = pipeline.get_clock()
    if pts < 0 or clock is None:
        return now
    age = (clock.get_time() - pipeline.get_base_time() - pts) / 1e9
    return now - age if 0.0 <= age < 10.0 else now


def run(cfg):
    try:
        Gst = load_gst()
        pipeline = Gst.parse_launch(cfg["description"] + SINK)
    except Exception as exc:
        send_json(KIND_ERROR, {"stage": "setup", "message": "%s: %s" % (type(exc).__name__, exc)})
        return EXIT_SETUP
    src = pipeline.get_by_name("src")
    if src is not None and cfg.get("username") is not None:
        src.set_property("user-id", cfg["username"])
        src.set_property("user-pw", cfg.get("password") or "")
    sink = pipeline.get_by_name("edged_sink")
    bus = pipeline.get_bus()
    if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        msg = bus.pop_filtered(Gst.MessageType.ERROR)
        text = msg.parse_error()[0].message if msg is not None else "the pipeline refused to start"
        send_json(KIND_ERROR, {"stage": "start", "message": text})
        pipeline.set_state(Gst.State.NULL)
        return EXIT_ERROR
    stall = float(cfg.get("stall_timeout_s", 5.0))
    last = time.monotonic()
    limit = max(stall, float(cfg.get("first_frame_timeout_s", stall)))
    seq = 0
    code = EXIT_OK
    try:
        while not _stopping:
            sample = sink.emit("try-pull-sample", 100 * Gst.MSECOND)
            if sample is not None:
                buf = sample.get_buffer()
                s = sample.get_caps().get_structure(0)
                width, height = s.get_value("width"), s.get_value("height")
                data = buf.extract_dup(0, buf.get_size())
                pts = buf.pts if buf.pts != Gst.CLOCK_TIME_NONE else -1
                seq += 1
                if seq == 1:
                    send_json(KIND_INFO, {"caps": sample.get_caps().to_string()[:300],
                                          "decoders": _decoders(Gst, pipeline)})
                send(KIND_FRAME, data, seq, pts, _captured(pipeline, pts, Gst), width, height,
                     len(data) // height if height else 0)
                last, limit = time.monotonic(), stall
            msg = bus.pop_filtered(Gst.MessageType.ERROR | Gst.MessageType.EOS)
            if msg is not None and msg.type == Gst.MessageType.ERROR:
                err, _debug = msg.parse_error()
                send_json(KIND_ERROR, {"stage": "stream", "message": err.message,
                                       "element": msg.src.get_name() if msg.src else None})
                code = EXIT_ERROR
                break
            if (msg is not None and msg.type == Gst.MessageType.EOS) or sink.get_property("eos"):
                if cfg.get("loop") and pipeline.seek_simple(Gst.Format.TIME,
                                                            Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, 0):
                    continue
                code = EXIT_EOS
                break
            if time.monotonic() - last > limit:
                send_json(KIND_ERROR, {"stage": "stall", "message": "no frame for %.1f s" % limit})
                code = EXIT_STALL
                break
    except (BrokenPipeError, OSError):
        code = EXIT_PIPE
    finally:
        pipeline.set_state(Gst.State.NULL)
    return code


def main(argv):
    if "--probe" in argv:
        return probe()
    signal.signal(signal.SIGTERM, lambda *_: _stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: _stopping.append(1))
    try:
        cfg = json.loads(sys.stdin.readline())
        sys.stdin.close()
    except ValueError as exc:
        sys.stderr.write("capture helper: bad configuration line: %s\n" % exc)
        return EXIT_SETUP
    try:
        return run(cfg)
    except (BrokenPipeError, OSError):
        return EXIT_PIPE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
