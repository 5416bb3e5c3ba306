"""Real camera sources for the camera tests: a gst-rtsp-server on a free loopback port (the
system Python with python3-gi and gir1.2-gst-rtsp-server-1.0, which `make test` installs), the
scikit-image test pictures, a model repository with the tiny detector and CenterFace, and the
daemon as a process. Nothing is mocked: GStreamer, mosquitto and ONNX Runtime are the real ones."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from camkit import SYSTEM_PYTHON, RtspServer
from helpers import REPO

sys.path.insert(0, str(REPO / "tools"))


def _gst_ready() -> str | None:
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "assert Gst.ElementFactory.find('x264enc') and Gst.ElementFactory.find('avdec_h264')")
    r = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True)
    return None if r.returncode == 0 else r.stderr.strip().splitlines()[-1:]


@pytest.fixture(scope="session", autouse=True)
def gstreamer_installed() -> None:
    missing = _gst_ready()
    if missing:
        pytest.fail(f"GStreamer/python3-gi/gst-rtsp-server missing on {SYSTEM_PYTHON} ({missing}): "
                    "`make system-deps` installs them")


@pytest.fixture
def rtsp(tmp_path: Path) -> Iterator:
    started: list[RtspServer] = []

    def make(**kw) -> RtspServer:
        s = RtspServer(tmp_path, **kw).start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.kill()


@pytest.fixture(scope="session")
def pictures() -> Path:
    import test_pictures

    return test_pictures.ensure()


@pytest.fixture(scope="session")
def camera_repo(tmp_path_factory: pytest.TempPathFactory, chexnet_ready: Path) -> Path:
    """chexnet-tiny (DICOM), detector-tiny (cameras, ~1 ms), the seeded detector of realistic cost
    (~120 ms per frame here) and the real CenterFace."""
    from edged.models.synth import write_model

    repo = tmp_path_factory.mktemp("camera-engines")
    write_model("tiny", repo / "chexnet-tiny")
    write_model("detector-tiny", repo / "detector-tiny")
    for model in ("centerface", "detector"):
        (repo / model).mkdir()
        for name in ("model.yaml", "model.onnx"):
            os.symlink(chexnet_ready / model / name, repo / model / name)
    return repo
