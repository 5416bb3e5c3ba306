"""``edged tune`` across power modes on a simulated Xavier NX: switching only with consent, the
mode it found restored on every exit (an interrupt included), each mode's values in the file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO

# two points per mode at 0.4 s: the current mode 5 (MODE_10W_DESKTOP) and 8 (MODE_20W_6CORE),
# a switch that needs no reboot on this module
SWEEP = ["--slo-ms", "5000", "--modes", "5,8", "--batch-sizes", "1,2", "--delays-ms", "0", "--concurrency", "1",
         "--seconds", "0.4"]


def _tune(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edged", "tune", "-c", str(config), *SWEEP, *extra]


@pytest.mark.skipif(os.geteuid() != 0, reason="nvpmodel (the stand-in too) switches modes as root only")
def test_tune_switches_modes_with_consent_and_restores_the_mode_it_found(jetson, tiny_repo, tmp_path):
    tree = jetson("xavier-nx")
    assert tree.status() == "pmode:0005\n"
    state = tmp_path / "state"
    config = tmp_path / "edged.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(state), "cache_dir": str(tmp_path / "cache"),
                                      "model_repository": str(tiny_repo), "models": [{"name": "chexnet-tiny"}],
                                      "power": {"sysroot": str(tree.root),
                                                "control_socket": str(tmp_path / "control.sock")}}))

    refused = subprocess.run(_tune(config), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert refused.returncode != 0 and "add --switch-modes to consent" in refused.stderr, refused.stderr
    assert tree.status() == "pmode:0005\n" and not _switches(tree)

    # interrupted while measuring mode 8: mode 5 is back before it exits
    proc = subprocess.Popen(_tune(config, "--switch-modes"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    assert proc.stderr is not None
    seen = ""
    while "[1/2] chexnet-tiny mode 8" not in seen:
        line = proc.stderr.readline()
        assert line, f"tune ended early: {seen}{proc.stderr.read()}"
        seen += line
    assert tree.status() == "pmode:0008\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "restored mode 5" in err and tree.status() == "pmode:0005\n", err

    # resumed: the saved points are kept, the rest measured, the mode restored again
    done = subprocess.run(_tune(config, "--switch-modes"), capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "(saved)" in done.stderr and tree.status() == "pmode:0005\n"
    tuned = yaml.safe_load((state / "tuned-batching.yaml").read_text())
    assert set(tuned["models"]["chexnet-tiny"]["modes"]) == {"5", "8"}
    assert _switches(tree) == ["8", "5", "8", "5"], tree.nvpmodel_log()


def _switches(tree) -> list[str]:
    """The modes nvpmodel was told to switch to (``-m N``), in order; queries (``-q``) left out."""
    return [c["argv"][c["argv"].index("-m") + 1] for c in tree.nvpmodel_log() if "-m" in c["argv"]]
