"""``edged demo`` beside a daemon that uses the default control socket, and nothing left behind.

The daemon must hold the real default path (``/run/edged/control.sock``) for the test to mean
anything, and other people's daemons may run on this machine: so both run in a private mount
namespace whose ``/run`` is a fresh tmpfs (root only; the test says so where that is refused).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edged.localbroker import free_port
from helpers import REPO, write_config

SCRIPT = """
set -u
mount -t tmpfs tmpfs /run && mkdir -p /run/edged || exit 90
"$PY" -m edged run -c "$CFG" > "$OUT/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 300); do [ -S /run/edged/control.sock ] && break; sleep 0.2; done
[ -S /run/edged/control.sock ] || { echo "daemon never listened"; kill -9 $daemon; exit 91; }
TMPDIR="$OUT/demo-tmp" "$PY" -m edged demo > "$OUT/demo.out" 2> "$OUT/demo.err"
echo "demo $?"
"$PY" -m edged.control.edgectl status --json > "$OUT/status.json"
echo "edgectl $?"
kill -TERM $daemon; wait $daemon
echo "daemon $?"
"""


def test_demo_runs_beside_a_daemon_on_the_default_socket_and_cleans_up(tmp_path, broker, tiny_repo, chexnet_ready):
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs a private mount namespace (root) to give the daemon the default control socket")
    (tmp_path / "demo-tmp").mkdir()
    cfg = write_config(tmp_path / "edged.yaml", node_id="resident", state_dir=str(tmp_path / "state"),
                       cache_dir=str(tmp_path / "cache"), model_repository=str(tiny_repo),
                       models=[{"name": "chexnet-tiny"}], dicom={"bind": "127.0.0.1", "port": free_port()},
                       mqtt={"host": "127.0.0.1", "port": broker.port})  # power.control_socket: the default
    run = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", SCRIPT],
                         env={"PY": sys.executable, "CFG": str(cfg), "OUT": str(tmp_path), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
                              "EDGED_FREE_PORTS": os.environ.get("EDGED_FREE_PORTS", "")},  # the demo's broker port
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    report = dict(line.split() for line in run.stdout.splitlines() if line.count(" ") == 1)
    demo_err = (tmp_path / "demo.err").read_text() if (tmp_path / "demo.err").exists() else ""
    assert report.get("demo") == "0", f"{run.stdout}{run.stderr}\n{demo_err}"
    assert "Traceback" not in demo_err
    out = (tmp_path / "demo.out").read_text()
    assert "status 0x0000" in out and "clinical: false" in out
    status = json.loads((tmp_path / "status.json").read_text())  # the resident daemon still answers there
    assert report.get("edgectl") == "0" and status["daemon"]["node"] == "resident"
    assert report.get("daemon") == "0"
    # nothing of edged's is left (ONNX Runtime keeps its own ".ses" session file in TMPDIR)
    assert [p.name for p in (tmp_path / "demo-tmp").iterdir() if p.name != ".ses"] == []
