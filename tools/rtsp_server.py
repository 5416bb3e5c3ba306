#!/usr/bin/env python3
"""An RTSP server that behaves like an IP camera, for tests, the benchmark and the demo.

Runs on the system Python with python3-gi and gir1.2-gst-rtsp-server-1.0 (Debian; JetPack has
both). Serves ``/cam0`` … ``/cam{N-1}`` on 127.0.0.1: H.264 (x264, zero latency) of a moving
test pattern (or, with ``--picture``, a still picture looped as live video) at the given size and
rate, one encoder per mount shared by its clients, as an IP camera does. Prints ``READY <port>`` once listening. SIGSTOP freezes it with its sockets open
(a stalled camera); SIGTERM/kill ends it (a camera that went away).

    /usr/bin/python3 tools/rtsp_server.py --port 8554 --cameras 4 --width 640 --height 360 --fps 15
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8554)
    p.add_argument("--cameras", type=int, default=1)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=int, default=15)
    p.add_argument("--pattern", default="ball")
    p.add_argument("--picture", help="serve this PNG (e.g. faces) as live video instead of a test pattern")
    p.add_argument("--user", help="require this user (password from --password-file)")
    p.add_argument("--password-file")
    args = p.parse_args(argv)
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for i in range(args.cameras):
        factory = GstRtspServer.RTSPMediaFactory()
        if args.picture:
            source = ("filesrc location=\"%s\" ! pngdec ! videoconvert ! imagefreeze is-live=true "
                      "! videoscale ! videoconvert" % args.picture)
        else:
            source = "videotestsrc is-live=true pattern=%s" % args.pattern
        factory.set_launch(
            "( %s ! video/x-raw,width=%d,height=%d,framerate=%d/1 "
            "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=%d bitrate=1000 "
            "! rtph264pay name=pay0 pt=96 config-interval=1 )" % (source, args.width, args.height, args.fps, args.fps))
        factory.set_shared(True)
        if args.user:
            permissions = GstRtspServer.RTSPPermissions()
            permissions.add_permission_for_role("camera", "media.factory.access", True)
            permissions.add_permission_for_role("camera", "media.factory.construct", True)
            factory.set_permissions(permissions)
        mounts.add_factory("/cam%d" % i, factory)
    if args.user:
        with open(args.password_file) as f:
            password = f.read().strip()
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "camera")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, password), token)
        server.set_auth(auth)
    if server.attach(None) == 0:
        sys.stderr.write("rtsp_server: cannot listen on 127.0.0.1:%d\n" % args.port)
        return 1
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print("READY %d" % args.port, flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
