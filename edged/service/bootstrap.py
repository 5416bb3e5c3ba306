"""First boot of a flashed image: build /opt/edged/venv from what ``edged install`` staged.

``edged install`` copies this file to ``/opt/edged/libexec/edged_bootstrap.py``;
``edged-bootstrap.service`` runs it with the daemon's interpreter (the target's python3, or the
relocatable CPython staged in /opt/edged/python with ``--python-dist``), before edged and
edged-engines. Standard library only: it runs before any venv exists. The venv is built here,
not on the host, because a venv is not relocatable and its compiled wheels must match the
device. A digest stamp, written last, makes every later boot a no-op and an interrupted build
be redone; a re-install with other inputs changes the digest, so the next boot rebuilds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PREFIX = "/opt/edged"


class BootstrapError(Exception):
    """The venv cannot be built; the message says why."""


def wheel_version(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.name.split("-")[1]))


def bootstrap(prefix: Path) -> str:
    """Build ``prefix/venv`` with this interpreter from the staged inputs, unless up to date."""
    spec = json.loads((prefix / "bootstrap.json").read_text(encoding="utf-8"))
    venv, wheels = prefix / "venv", prefix / "wheels"
    stamp = venv / ".edged-digest"
    if stamp.is_file() and stamp.read_text().strip() == spec["digest"] and (venv / "bin/edged").exists():
        return f"{venv} is up to date"
    if sys.version_info < (3, 10):
        raise BootstrapError(f"{sys.executable} is Python {sys.version.split()[0]}; edged needs >= 3.10")
    pip = max(wheels.glob("pip-*.whl"), key=wheel_version, default=None)
    if pip is None:
        raise BootstrapError(f"no pip wheel in {wheels}")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)]
                   + (["--system-site-packages"] if spec["system_site_packages"] else []), check=True)
    with tempfile.TemporaryDirectory() as tmp:
        requirement = spec["install"]
        if requirement == "src":  # pip builds in the tree it is given: build a copy
            requirement = shutil.copytree(prefix / "src", Path(tmp) / "src")
        cmd = [str(venv / "bin/python"), f"{pip}/pip", "install", "--no-cache-dir",
               "--disable-pip-version-check", "--no-warn-script-location", "--ignore-installed",
               "--find-links", str(wheels)] + (["--no-index"] if spec["offline"] else [])
        # Offline means exactly the staged wheels: no pip.conf (index, find-links) may add more.
        env = dict(os.environ, PIP_CONFIG_FILE=os.devnull) if spec["offline"] else None
        subprocess.run(cmd + [str(requirement)], check=True, env=env)
    if not (venv / "bin/edged").exists():
        raise BootstrapError(f"{spec['install']} installed no bin/edged into {venv}")
    stamp.write_text(spec["digest"] + "\n", encoding="utf-8")
    return f"built {venv} from {spec['install']}"


def main(argv: list[str] | None = None) -> int:
    """``python3 edged_bootstrap.py bootstrap --prefix /opt/edged``."""
    parser = argparse.ArgumentParser(prog="edged_bootstrap.py")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("bootstrap", help="build PREFIX/venv from the staged wheelhouse").add_argument(
        "--prefix", type=Path, default=Path(PREFIX))
    args = parser.parse_args(argv)
    try:
        print(bootstrap(args.prefix), flush=True)
    except (BootstrapError, OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"edged bootstrap: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
