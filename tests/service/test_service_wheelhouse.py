"""``edged wheelhouse``: which platforms pip may pick for a JetPack, and the check of the result.

The download itself needs PyPI and runs in ``make flash-test`` (the image's venv is built from
it); here pip is replaced by a stand-in that writes the wheels a resolver would have chosen."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edged.service.targetcheck import TargetMismatch
from edged.service.wheelhouse import build, pip_download_command, platforms, requirements
from test_service_install import REPO, make_wheel


def test_platforms_stop_at_the_jetpacks_glibc() -> None:
    jp46 = platforms((2, 27))
    assert jp46[0] == "manylinux2014_aarch64" and jp46[-1] == "manylinux_2_27_aarch64"
    assert "manylinux_2_28_aarch64" not in jp46 and "manylinux_2_17_aarch64" in jp46
    cmd = pip_download_command(Path("/w"), "5.1", "3.11", ["onnxruntime>=1.17"])
    assert cmd[cmd.index("--python-version") + 1] == "3.11" and "cp311" in cmd and "--only-binary=:all:" in cmd
    plats = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"]
    assert plats[-1] == "manylinux_2_31_aarch64" and cmd[-2:] == ["onnxruntime>=1.17", "pip"]


def test_requirements_come_from_setup_cfg() -> None:
    reqs = requirements(REPO)
    assert any(r.startswith("onnxruntime") for r in reqs) and any(r.startswith("pydicom") for r in reqs)
    assert not any("#" in r for r in reqs)


def _fake_pip(tags: dict[str, str]):
    def run(cmd, check):
        dest = Path(cmd[cmd.index("--dest") + 1] if "--dest" in cmd else cmd[cmd.index("-w") + 1])
        if "download" in cmd:
            for name, tag in tags.items():
                make_wheel(dest, name, "1.0", tag=tag)
        else:
            make_wheel(dest, "edged", "0.1.0")
        return subprocess.CompletedProcess(cmd, 0)
    return run


def test_build_lists_what_it_fetched_and_refuses_a_wheel_too_new(tmp_path: Path) -> None:
    ok = {"numpy": "cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64", "pip": "py3-none-any"}
    lines = build(tmp_path / "a", "4.6", "3.11", REPO, run=_fake_pip(ok))
    assert "JetPack 4.6 (aarch64, glibc 2.27, CPython 3.11)" in lines[0]
    assert any("numpy-1.0-" in line and "(glibc >= 2.27)" in line for line in lines)
    bad = dict(ok, onnxruntime="cp311-cp311-manylinux_2_28_aarch64")
    with pytest.raises(TargetMismatch, match="onnxruntime-1.0-cp311-cp311-manylinux_2_28_aarch64.whl: needs glibc 2.28"):
        build(tmp_path / "b", "4.6", "3.11", REPO, run=_fake_pip(bad))
