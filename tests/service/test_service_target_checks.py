"""The installer refuses what the target cannot run: glibc, CPU, CPython ABI; ``--python-dist``.

Roots are laid out like JetPack's Ubuntu (``libc-2.27.so`` behind ``libc.so.6`` on 18.04) with
aarch64 ELF files written by tests/service/elfwriter.py; the ELF reader is also checked
against this host's real libc and python3 so the fakes cannot drift from real files.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from edged.service.install import InstallError, install
from edged.service.pythondist import sha256_file
from edged.service.targetcheck import read_elf, target_glibc, wheel_problem
from elfwriter import elf, jetpack_root
from test_service_install import REPO, VERSION, make_wheel, manifest

ORT_2_28 = "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_aarch64.whl"
ORT_2_27 = "onnxruntime-1.28.0-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl"


def test_elf_reader_on_this_hosts_real_libc_and_python() -> None:
    libc_version = tuple(int(n) for n in os.confstr("CS_GNU_LIBC_VERSION").split()[1].split(".")[:2])
    assert target_glibc(Path("/"), "x86_64") == libc_version
    python = read_elf(Path(os.path.realpath("/usr/bin/python3")))
    assert python is not None and python.machine == "x86_64" and "libc.so.6" in python.needed
    assert (2, 2) < python.needs_glibc <= libc_version


def test_wheel_tags_against_glibc_cpu_and_abi() -> None:
    jp46 = ("aarch64", (3, 11), (2, 27))
    assert "needs glibc 2.28" in wheel_problem(ORT_2_28, *jp46)
    assert wheel_problem(ORT_2_27, *jp46) is None  # one of its tags fits
    assert wheel_problem("numpy-2.4.0-cp311-cp311-manylinux2014_aarch64.whl", *jp46) is None
    assert "built for x86_64" in wheel_problem("numpy-2.4.0-cp311-cp311-manylinux2014_x86_64.whl", *jp46)
    assert "cp310" in wheel_problem("numpy-2.4.0-cp310-cp310-manylinux2014_aarch64.whl", *jp46)
    assert "musl" in wheel_problem("numpy-2.4.0-cp311-cp311-musllinux_1_2_aarch64.whl", *jp46)
    assert wheel_problem("pydantic_core-2.0-cp38-abi3-manylinux2014_aarch64.whl", *jp46) is None
    assert "3.12" in wheel_problem("x-1.0-cp312-abi3-manylinux2014_aarch64.whl", *jp46)
    assert wheel_problem("paho_mqtt-2.1.0-py3-none-any.whl", *jp46) is None


def _house(tmp_path: Path, *extra: str) -> Path:
    house = tmp_path / "wheelhouse"
    house.mkdir(exist_ok=True)
    make_wheel(house, "edged", VERSION, files={"edged/__init__.py": ""}, scripts={"edged": "edged:main"})
    for name in extra:
        dist, version, tag = name[:-4].split("-", 2)
        make_wheel(house, dist, version, tag=tag)
    return house


def test_a_manylinux_2_28_wheel_is_refused_on_a_2_27_root(tmp_path: Path) -> None:
    """JetPack 4.6's Ubuntu 18.04 (glibc 2.27) with a Python >= 3.10 and onnxruntime 1.32."""
    root = jetpack_root(tmp_path / "jp46", glibc="2.27", python="3.11")
    with pytest.raises(InstallError) as err:
        install(root, REPO, wheelhouse=_house(tmp_path, ORT_2_28), run_tools=False)
    message = str(err.value)
    assert ORT_2_28 in message and "needs glibc 2.28" in message and "the target has 2.27" in message
    assert "edged wheelhouse --jetpack 4.6 --python 3.11" in message, "says what to fetch instead"
    assert not (root / "opt").exists(), "nothing written before the check"

    (tmp_path / "wheelhouse" / ORT_2_28).unlink()
    make_wheel(tmp_path / "wheelhouse", "onnxruntime", "1.28.0", tag=ORT_2_27.split("-", 2)[2][:-4])
    install(root, REPO, wheelhouse=tmp_path / "wheelhouse", run_tools=False)


def test_the_same_wheel_is_fine_on_a_2_31_root(tmp_path: Path) -> None:
    root = jetpack_root(tmp_path / "jp51", glibc="2.31", python="3.11")
    install(root, REPO, wheelhouse=_house(tmp_path, "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_aarch64.whl"),
            run_tools=False)


def _dist(tmp_path: Path, *, machine: str = "aarch64", needs: str = "GLIBC_2.17", version: str = "3.11",
          sqlite_needs: str = "libsqlite3.so.0") -> Path:
    """A python-build-standalone-like tarball: python/bin/python3.X, python3 -> python3.X, lib/."""
    members = {
        f"python/bin/python{version}": (elf(machine, needs=(needs,), needed=("libc.so.6",)), 0o755),
        f"python/lib/python{version}/os.py": (b"# stdlib\n", 0o644),
        f"python/lib/python{version}/lib-dynload/_sqlite3.cpython-311-aarch64-linux-gnu.so":
            (elf(machine, needs=("GLIBC_2.17",), needed=(sqlite_needs, "libc.so.6")), 0o755),
    }
    path = tmp_path / "cpython.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for folder in ("python", "python/bin", "python/lib"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, (data, mode) in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("python/bin/python3")
        link.type, link.linkname = tarfile.SYMTYPE, f"python{version}"
        tar.addfile(link)
    return path


def test_python_dist_is_staged_and_builds_the_venv(tmp_path: Path) -> None:
    root = jetpack_root(tmp_path / "jp46", glibc="2.27", python="3.6", libs=("libsqlite3.so.0",))
    dist = _dist(tmp_path)
    house = _house(tmp_path, ORT_2_27)
    actions = install(root, REPO, wheelhouse=house, run_tools=False, python_dist=dist,
                      python_dist_sha256=sha256_file(dist))
    staged = root / "opt/edged/python"
    assert (staged / "bin/python3.11").stat().st_mode & 0o777 == 0o755
    assert os.readlink(staged / "bin/python3") == "python3.11"
    assert (staged / "lib/python3.11/os.py").read_bytes() == b"# stdlib\n"
    unit = (root / "usr/lib/systemd/system/edged-bootstrap.service").read_text()
    assert "ExecStart=/opt/edged/python/bin/python3.11 /opt/edged/libexec/edged_bootstrap.py" in unit
    spec = json.loads((root / "opt/edged/bootstrap.json").read_text())
    assert spec["python"] == "/opt/edged/python/bin/python3.11" and spec["system_site_packages"] is False
    config = (root / "etc/edged/edged.yaml").read_text()
    assert "worker_python" not in config or "/usr/bin/python3" in config, "TensorRT stays on the system Python"
    assert any(a.startswith("write /opt/edged/python/bin/python3.11") for a in actions)

    before = manifest(root)
    again = install(root, REPO, wheelhouse=house, run_tools=False, python_dist=dist,
                    python_dist_sha256=sha256_file(dist))
    assert manifest(root) == before
    assert [a for a in again if not a.startswith("note:")][-1].endswith("paths already up to date")
    assert len([a for a in again if not a.startswith("note:")]) == 1, again


def test_python_dist_digest_must_match(tmp_path: Path) -> None:
    root = jetpack_root(tmp_path / "jp46", libs=("libsqlite3.so.0",))
    with pytest.raises(InstallError, match="sha256 is [0-9a-f]{64}, not the 00"):
        install(root, REPO, run_tools=False, python_dist=_dist(tmp_path), python_dist_sha256="00" * 32)
    with pytest.raises(InstallError, match="--python-dist needs --python-dist-sha256"):
        install(root, REPO, run_tools=False, python_dist=_dist(tmp_path))
    assert not (root / "opt").exists()


@pytest.mark.parametrize("case, match", [
    ("glibc", "needs glibc 2.30, the target root has 2.27"),
    ("x86", "for x86_64, the target root is aarch64"),
    ("sqlite", "_sqlite3 needs libsqlite3.so.0"),
    ("old", "Python 3.8; edged needs >= 3.10"),
])
def test_python_dist_that_cannot_run_there_is_refused(tmp_path: Path, case: str, match: str) -> None:
    libs = () if case == "sqlite" else ("libsqlite3.so.0",)
    root = jetpack_root(tmp_path / "jp46", glibc="2.27", python="3.6", libs=libs)
    dist = _dist(tmp_path, needs="GLIBC_2.30" if case == "glibc" else "GLIBC_2.17",
                 machine="x86_64" if case == "x86" else "aarch64", version="3.8" if case == "old" else "3.11")
    with pytest.raises(InstallError, match=match):
        install(root, REPO, run_tools=False, python_dist=dist, python_dist_sha256=sha256_file(dist))
    assert not (root / "opt").exists()


def test_wheels_are_checked_against_the_dist_interpreter(tmp_path: Path) -> None:
    root = jetpack_root(tmp_path / "jp46", glibc="2.27", python="3.6", libs=("libsqlite3.so.0",))
    dist = _dist(tmp_path)
    house = _house(tmp_path, "numpy-2.4.0-cp312-cp312-manylinux2014_aarch64.whl")
    with pytest.raises(InstallError, match="built for cp312, the target's interpreter is cp311"):
        install(root, REPO, wheelhouse=house, run_tools=False, python_dist=dist, python_dist_sha256=sha256_file(dist))
