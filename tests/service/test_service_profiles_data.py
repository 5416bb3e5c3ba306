"""The power profiles reach a flashed device: staged with the source, carried by the wheel,
found by the daemon in the venv the first boot builds. Without them every nvpmodel mode gets
fallback batching and ``edgectl power set balanced`` answers "unknown power mode"."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from edged.service.install import install
from test_service_install import REPO, VERSION

PROFILES = sorted(p.name for p in (REPO / "power_profiles").glob("*.yaml"))


def test_staged_source_builds_a_wheel_whose_venv_finds_every_profile(tmp_path: Path) -> None:
    assert len(PROFILES) >= 10
    root = tmp_path / "rootfs"
    root.mkdir()
    install(root, REPO, run_tools=False)
    staged = root / "opt/edged/src"
    assert sorted(p.name for p in (staged / "power_profiles").glob("*.yaml")) == PROFILES, \
        "the image's source tree lacks the power profiles"

    # What the first boot does with a source-only image (and what `edged wheelhouse` does on the
    # host): build edged's wheel from the staged tree. Build a copy: pip writes into the tree.
    build = tmp_path / "build"
    subprocess.run(["cp", "-a", str(staged), str(build)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "--disable-pip-version-check", "-q", "-w", str(tmp_path / "dist"), str(build)],
                   check=True, timeout=300)
    wheel = tmp_path / "dist" / f"edged-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        data = sorted(Path(n).name for n in zf.namelist()
                      if n.startswith(f"edged-{VERSION}.data/data/share/edged/power_profiles/"))
    assert data == PROFILES, "the wheel lacks the power profiles"

    # Installed into a fresh venv (not a checkout), the daemon's lookup finds them there.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "-q",
                    "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)], check=True, timeout=300)
    deps = sysconfig.get_paths()["purelib"]  # pydantic, PyYAML of this environment, after the venv's own
    probe = ("import sys; sys.path.append(sys.argv[1]); import edged.power.profiles as p; "
             "d = p.default_profile_dir(); print(d); print(len(p.load_profiles(d))); print(p.__file__)")
    out = subprocess.run([str(venv / "bin/python"), "-c", probe, deps], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout.split()
    assert out[0] == str(venv / "share/edged/power_profiles")
    assert int(out[1]) == len(PROFILES)
    assert out[2].startswith(str(venv)), "the installed package, not the checkout"
