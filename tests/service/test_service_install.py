"""`edged install` into a temporary root: the tree, idempotency, safety checks, first-boot venv."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from edged.service import install as inst
from edged.service.install import InstallError, add_install_parser, install, source_version

REPO = Path(__file__).resolve().parents[2]
VERSION = source_version(REPO)


def make_wheel(directory: Path, name: str, version: str, tag: str = "py3-none-any",
               files: dict[str, str] | None = None, scripts: dict[str, str] | None = None) -> Path:
    """A minimal valid wheel (RECORD hashes included), so pip installs it offline."""
    dist = f"{name}-{version}.dist-info"
    content = dict(files or {})
    content[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    content[f"{dist}/WHEEL"] = f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n"
    if scripts:
        content[f"{dist}/entry_points.txt"] = "[console_scripts]\n" + "".join(
            f"{k} = {v}\n" for k, v in scripts.items())
    record = []
    for path, text in content.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    content[f"{dist}/RECORD"] = "\n".join(record + [f"{dist}/RECORD,,"]) + "\n"
    wheel = directory / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in content.items():
            zf.writestr(path, text)
    return wheel


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    """An offline wheelhouse whose "edged" wheel is a stub with an `edged` console script."""
    house = tmp_path / "wheelhouse"
    house.mkdir()
    make_wheel(house, "edged", VERSION, files={"edged/__init__.py": "def main():\n    print('edged stub')\n"},
               scripts={"edged": "edged:main"})
    return house


def manifest(root: Path) -> dict[str, tuple]:
    """Every path under root with its type, mode, owner and content hash or link target."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                detail = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                detail = "dir"
            out[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                                st.st_uid, st.st_gid, detail)
    return out


def test_twice_gives_the_identical_tree(tmp_path: Path, wheelhouse: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    first = install(root, REPO, wheelhouse=wheelhouse)
    assert any(a.startswith("write /usr/lib/systemd/system/edged.service") for a in first)
    before = manifest(root)
    second = install(root, REPO, wheelhouse=wheelhouse)
    assert manifest(root) == before
    changes = [a for a in second if not a.startswith("note:")]
    assert len(changes) == 1 and changes[0].endswith("paths already up to date"), changes

    m = {path: entry for path, entry in before.items()}
    wants = "etc/systemd/system/multi-user.target.wants"
    assert m[f"{wants}/edged.service"][4] == "/usr/lib/systemd/system/edged.service"
    assert m[f"{wants}/edged-engines.service"][4] == "/usr/lib/systemd/system/edged-engines.service"
    assert m["etc/edged"][1] == 0o750 and m["etc/edged/edged.yaml"][1] == 0o640
    assert m["opt/edged/libexec/edged_bootstrap.py"][1] == 0o755
    for rel in ("usr/lib/systemd/system/edged-bootstrap.service", "usr/lib/sysusers.d/edged.conf",
                "usr/lib/tmpfiles.d/edged.conf", "usr/lib/systemd/system/edged.service.d/10-bootstrap.conf",
                "usr/lib/systemd/system/edged-engines.service.d/10-bootstrap.conf",
                "opt/edged/src/setup.cfg", "opt/edged/src/edged/service/install.py",
                "opt/edged/engines/chexnet/model.yaml"):
        assert m[rel][1] == 0o644, rel
    assert all(entry[2] == os.geteuid() for path, entry in m.items() if path.startswith("opt/"))
    assert not any(path.endswith((".pyc", "__pycache__")) for path in m)
    wheels = sorted(p.name for p in (root / "opt/edged/wheels").iterdir())
    assert f"edged-{VERSION}-py3-none-any.whl" in wheels and any(w.startswith("pip-") for w in wheels)
    spec = json.loads((root / "opt/edged/bootstrap.json").read_text())
    assert spec["install"] == f"edged=={VERSION}" and spec["offline"] is True
    config = yaml.safe_load((root / "etc/edged/edged.yaml").read_text())
    assert config["state_dir"] == "/var/lib/edged" and config["cache_dir"] == "/var/cache/edged"
    assert {"node_id", "dicom", "mqtt", "models"} <= set(config)
    assert {"ae_title", "bind", "port"} <= set(config["dicom"])
    assert {"host", "port", "topic_prefix"} <= set(config["mqtt"])
    if os.geteuid() == 0 and (root / "etc/passwd").exists():  # systemd-sysusers ran
        assert "edged:x:" in (root / "etc/passwd").read_text()


def test_installed_config_passes_edged_check(tmp_path: Path) -> None:
    """The config from the template plus the installed model repository validate together."""
    root = tmp_path / "rootfs"
    root.mkdir()
    install(root, REPO, run_tools=False)
    result = subprocess.run(
        [sys.executable, "-m", "edged", "check", "-c", str(root / "etc/edged/edged.yaml")],
        capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and f"checking as installed under {root}" in result.stdout


def test_site_config_survives_and_options_are_reversible(tmp_path: Path, wheelhouse: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    install(root, REPO, wheelhouse=wheelhouse, run_tools=False)
    config = root / "etc/edged/edged.yaml"
    config.write_text("node_id: ward-3\n")
    (root / "opt/edged/engines/retired").mkdir()
    (root / "opt/edged/engines/retired/model.yaml").write_text("name: retired\n")
    actions = install(root, REPO, wheelhouse=wheelhouse, run_tools=False, prebuild=False)
    assert config.read_text() == "node_id: ward-3\n"
    assert not (root / "opt/edged/engines/retired").exists(), "installer-owned trees are mirrored"
    assert "remove /etc/systemd/system/multi-user.target.wants/edged-engines.service" in actions
    assert (root / "etc/systemd/system/multi-user.target.wants/edged.service").is_symlink()

    before = manifest(root)
    dry = install(root, REPO, wheelhouse=wheelhouse, run_tools=False, prebuild=True, dry_run=True)
    assert manifest(root) == before, "--dry-run changes nothing"
    assert "would link /etc/systemd/system/multi-user.target.wants/edged-engines.service -> " \
           "/usr/lib/systemd/system/edged-engines.service" in dry


def _fake_python(root: Path, version: str, machine: int) -> None:
    """usr/bin/python3 -> python3.X, an ELF header for ``machine`` (183 aarch64, 62 x86_64)."""
    bindir = root / "usr/bin"
    bindir.mkdir(parents=True)
    header = b"\x7fELF\x02\x01\x01" + bytes(11) + machine.to_bytes(2, "little") + bytes(44)
    (bindir / f"python{version}").write_bytes(header)
    (bindir / "python3").symlink_to(f"python{version}")


def test_wheels_for_another_target_are_refused(tmp_path: Path, wheelhouse: Path) -> None:
    root = tmp_path / "rootfs"
    _fake_python(root, "3.10", 183)
    make_wheel(wheelhouse, "numpy", "2.2.0", tag="cp310-cp310-manylinux_2_17_aarch64.manylinux2014_aarch64")
    install(root, REPO, wheelhouse=wheelhouse, run_tools=False)  # right CPU, right CPython

    x86 = make_wheel(wheelhouse, "orjson", "3.0", tag="cp310-cp310-manylinux_2_17_x86_64")
    with pytest.raises(InstallError, match="orjson-3.0-cp310-cp310-manylinux_2_17_x86_64.whl"):
        install(root, REPO, wheelhouse=wheelhouse, run_tools=False)
    x86.unlink()
    make_wheel(wheelhouse, "ujson", "5.0", tag="cp311-cp311-manylinux_2_17_aarch64")
    with pytest.raises(InstallError, match=r"ujson-5.0-cp311-cp311-manylinux_2_17_aarch64.whl: built for cp311, the target.s interpreter is cp310"):
        install(root, REPO, wheelhouse=wheelhouse, run_tools=False)


def test_a_python_older_than_310_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "jetpack5"
    _fake_python(root, "3.8", 183)
    with pytest.raises(InstallError, match="Python 3.8; edged needs >= 3.10"):
        install(root, REPO, run_tools=False)


def test_never_writes_through_a_symlink_that_leaves_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "host-usr-lib"
    outside.mkdir()
    root = tmp_path / "rootfs"
    (root / "usr").mkdir(parents=True)
    (root / "usr/lib").symlink_to(outside)  # absolute, as a careless image might have
    with pytest.raises(InstallError, match="outside"):
        install(root, REPO, run_tools=False)
    assert list(outside.iterdir()) == []


def test_cli_parser_runs_the_installer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="edged")
    add_install_parser(parser.add_subparsers(dest="command"))
    root = tmp_path / "rootfs"
    root.mkdir()
    args = parser.parse_args(["install", "--root", str(root), "--source", str(REPO), "--dry-run"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "would write /usr/lib/systemd/system/edged.service" in out
    assert list(root.iterdir()) == []
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    args = parser.parse_args(["install", "--root", str(a_file)])
    assert args.func(args) == 1
    assert "is not a directory" in capsys.readouterr().err
    args = parser.parse_args(["install", "--root", str(tmp_path / "new-root"), "--dry-run"])
    assert args.func(args) == 0 and not (tmp_path / "new-root").exists()  # created only for real


def test_first_boot_bootstrap_builds_the_venv_offline_once(tmp_path: Path, wheelhouse: Path) -> None:
    """The staged script alone (no edged import, no network) builds a working venv."""
    if inst.host_pip_wheel() is None:
        pytest.skip("no pip wheel on this host (ensurepip bundle or python3-pip-whl)")
    root = tmp_path / "rootfs"
    root.mkdir()
    install(root, REPO, wheelhouse=wheelhouse, run_tools=False, system_site_packages=False)
    prefix = root / "opt/edged"
    cmd = [sys.executable, "-I", str(prefix / "libexec/edged_bootstrap.py"), "bootstrap", "--prefix", str(prefix)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    built = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert built.returncode == 0, built.stderr
    assert built.stdout.splitlines()[-1] == f"built {prefix / 'venv'} from edged=={VERSION}"
    assert f"Looking in links: {prefix / 'wheels'}" in built.stdout.splitlines(), \
        "offline: only the staged wheels, whatever pip.conf on the machine says"
    run = subprocess.run([str(prefix / "venv/bin/edged")], capture_output=True, text=True)
    assert run.stdout == "edged stub\n"
    assert not list((prefix / "venv/lib").glob("python*/site-packages/pip")), "pip ran from its wheel"

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert again.stdout.strip() == f"{prefix / 'venv'} is up to date"

    (prefix / "venv/.edged-digest").write_text("stale\n")  # e.g. re-installed with new wheels
    rebuilt = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert rebuilt.returncode == 0 and rebuilt.stdout.splitlines()[-1].startswith("built ")
