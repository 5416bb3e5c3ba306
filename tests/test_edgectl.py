"""edgectl as a technician runs it: a process, against a real daemon process, on this plain host."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, cr_variants, storescu

REPRS = ("True", "False", "None", "{'", "['", "[{")


def edgectl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edged.control.edgectl", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def test_status_of_a_running_daemon_reads_like_prose(daemon_factory, collector, tmp_path):
    d = daemon_factory().start()
    assert storescu(d.port, *cr_variants(tmp_path, 2)).returncode == 0
    collector.wait_for(lambda c: len(c.results()) == 2)
    sock = str(tmp_path / "control.sock")
    run = edgectl("--socket", sock, "status")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "daemon: edged " in out and "on node test-node, healthy" in out
    assert "chexnet-tiny 0.1.0-seeded0: onnxruntime/fp32 on cpu, NOT clinical; batch up to 8; queue 0; " \
           "2 inferred in" in out
    assert f"dicom: AE EDGED on port {d.port}" in out
    assert "queues: spool 0 waiting, 0 quarantined; outbox " in out and "2 images done since start" in out
    assert "mqtt: connected to 127.0.0.1:" in out
    assert "power: unavailable" in out and "temperatures: " in out
    for repr_ in REPRS:
        assert repr_ not in out, f"{repr_} in {out}"
    data = json.loads(edgectl("--socket", sock, "status", "--json").stdout)
    assert data["daemon"]["running"] is True and data["daemon"]["processed"] == 2
    assert data["daemon"]["models"][0]["name"] == "chexnet-tiny"
    assert d.terminate() == 0


def test_status_without_a_daemon_exits_1_and_still_shows_the_board(tmp_path):
    run = edgectl("--socket", str(tmp_path / "absent.sock"), "status")
    assert run.returncode == 1
    assert f"daemon: not running — edged is not running (no control socket at {tmp_path / 'absent.sock'})" in run.stdout
    assert "platform: " in run.stdout and "Traceback" not in run.stderr
    run = edgectl("--socket", str(tmp_path / "absent.sock"), "status", "--json")
    assert run.returncode == 1 and json.loads(run.stdout)["daemon"]["running"] is False


def test_watch_redraws_until_ctrl_c(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "edged.control.edgectl", "--socket", str(tmp_path / "x.sock"),
                             "status", "--watch", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)
    frames = 0
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    while frames < 3 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        frames += line.startswith("edgectl status --watch 0.2")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert frames == 3 and proc.returncode == 0
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_closed_pipe_is_no_traceback(tmp_path):
    run = subprocess.run(f"{sys.executable} -m edged.control.edgectl --socket {tmp_path}/x.sock status --watch 0.1 "
                         "| head -n 2; echo \"status ${PIPESTATUS[0]}\"", shell=True, executable="/bin/bash",
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "Traceback" not in run.stderr and "BrokenPipe" not in run.stderr, run.stderr
    assert run.stdout.strip().endswith("status 141")


@pytest.mark.parametrize("argv", [["--help"], ["status", "--help"], ["power", "--help"], ["power", "set", "--help"],
                                  ["power", "list", "--help"]])
def test_help_lists_exit_codes_and_hides_test_options(argv):
    run = edgectl(*argv)
    assert run.returncode == 0
    for hidden in ("--root", "--nvpmodel", "--profiles"):
        assert hidden not in run.stdout
    if argv != ["power", "--help"]:
        assert "exit status:" in run.stdout and "1  failed (status: the daemon is not running" in run.stdout
