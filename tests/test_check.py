"""``edged check`` finds what ``edged run`` would fail on; ``run`` exits 2 on the same mistakes.

Each case here passed ``check`` (or failed without saying where) before check learned it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edged.localbroker import LocalBroker, free_port
from helpers import REPO, write_config


def edged(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


@pytest.fixture
def repo(tmp_path: Path, tiny_repo: Path) -> Path:
    out = tmp_path / "engines"
    shutil.copytree(tiny_repo / "chexnet-tiny", out / "chexnet-tiny")
    return out


def config(tmp_path: Path, repo: Path, **extra) -> Path:
    cfg = {"node_id": "n", "state_dir": str(tmp_path / "state"), "cache_dir": str(tmp_path / "cache"),
           "model_repository": str(repo), "models": [{"name": "chexnet-tiny"}],
           "dicom": {"bind": "127.0.0.1", "port": 0}, "mqtt": {"enabled": False},
           "power": {"control_socket": str(tmp_path / "ctl.sock")}, **extra}
    return write_config(tmp_path / "edged.yaml", **cfg)


def test_a_good_config_passes_and_lists_the_repository(tmp_path, repo):
    (repo / "other").mkdir()
    (repo / "other" / "model.yaml").write_text("name: other\n")
    run = edged("check", "-c", str(config(tmp_path, repo)))
    assert run.returncode == 0, run.stderr
    assert f"models in the repository {repo}: chexnet-tiny, other" in run.stdout
    assert "OK (node n, models chexnet-tiny)" in run.stdout


def test_wrong_onnx_digest_is_an_error_with_both_digests(tmp_path, repo):
    onnx = repo / "chexnet-tiny" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    cfg = config(tmp_path, repo)
    run = edged("check", "-c", str(cfg))
    assert run.returncode == 2
    assert f"model chexnet-tiny: {onnx} has sha256 " in run.stderr and "model.yaml pins " in run.stderr
    assert edged("run", "-c", str(cfg)).returncode == 2  # and run stops for good, not every 10 s


def test_missing_onnx_is_an_error(tmp_path, repo):
    (repo / "chexnet-tiny" / "model.onnx").unlink()
    run = edged("check", "-c", str(config(tmp_path, repo)))
    assert run.returncode == 2 and f"{repo / 'chexnet-tiny' / 'model.onnx'} is missing" in run.stderr


def test_unknown_model_name_suggests_and_lists(tmp_path, repo):
    cfg = config(tmp_path, repo, models=[{"name": "chexnet-tyni"}])
    run = edged("check", "-c", str(cfg))
    assert run.returncode == 2
    assert (f"models[0].name: chexnet-tyni: no model of that name in {repo} (did you mean chexnet-tiny?); "
            "the repository has: chexnet-tiny") in run.stderr
    r = edged("run", "-c", str(cfg))
    assert r.returncode == 2 and "(did you mean chexnet-tiny?)" in r.stderr


def test_unknown_keys_get_did_you_mean(tmp_path):
    cfg = tmp_path / "edged.yaml"
    cfg.write_text("dicom:\n  ae_titel: EDGED\nmqqt:\n  host: gw\n")
    run = edged("check", "-c", str(cfg))
    assert run.returncode == 2
    assert f"{cfg}:2: dicom.ae_titel: unknown key (did you mean ae_title?)" in run.stderr
    assert f"{cfg}:3: mqqt: unknown key (did you mean mqtt?)" in run.stderr


def test_digest_that_yaml_reads_as_a_number(tmp_path, repo):
    manifest = repo / "chexnet-tiny" / "model.yaml"
    text = manifest.read_text()
    digest = next(line for line in text.splitlines() if line.strip().startswith("sha256:"))
    manifest.write_text(text.replace(digest, digest.split("sha256:")[0] + "sha256: " + "0" * 64))
    run = edged("check", "-c", str(config(tmp_path, repo)))
    assert run.returncode == 2
    assert "onnx.sha256: expected text, but YAML read this value as a number" in run.stderr
    assert 'put it in quotes, e.g. sha256: "…"' in run.stderr


def test_missing_and_empty_credential_files_name_their_paths(tmp_path, repo):
    run = edged("check", "-c", str(config(tmp_path, repo, mqtt={
        "username_file": "/nonexistent/user", "password_file": "/nonexistent/pass"})))
    assert run.returncode == 2
    assert "mqtt.username_file: /nonexistent/user: no such file" in run.stderr
    (tmp_path / "user").write_text("edge\n")
    (tmp_path / "pass").write_text("\n")
    cfg = config(tmp_path, repo, mqtt={"username_file": str(tmp_path / "user"),
                                       "password_file": str(tmp_path / "pass")})
    run = edged("check", "-c", str(cfg))
    assert run.returncode == 2 and f"mqtt.password_file: {tmp_path / 'pass'} is empty" in run.stderr
    assert edged("run", "-c", str(cfg)).returncode == 2


def test_tls_files_that_are_not_certificates(tmp_path, repo):
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    cfg = config(tmp_path, repo, mqtt={"tls": {"ca_file": str(tmp_path / "ca.pem")}})
    run = edged("check", "-c", str(cfg))
    assert run.returncode == 2 and f"mqtt.tls.ca_file: {tmp_path / 'ca.pem'}: not a PEM CA certificate" in run.stderr
    r = edged("run", "-c", str(cfg))  # was exit 1 (a crash to restart) from paho's tls_set
    assert r.returncode == 2 and "not a PEM CA certificate" in r.stderr


def _read_only_dir(tmp_path: Path) -> Path:
    """A directory this process cannot write: mode 0500, or for root a read-only tmpfs."""
    where = tmp_path / "ro"
    where.mkdir()
    if os.geteuid() != 0:
        where.chmod(0o500)
        return where
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"root cannot be denied a write here without a read-only mount ({r.stderr.strip()})")
    return where


def test_unwritable_state_and_cache_dirs(tmp_path, repo):
    (tmp_path / "a-file").write_text("")
    ro = _read_only_dir(tmp_path)
    try:
        cfg = config(tmp_path, repo, state_dir=str(tmp_path / "a-file" / "state"), cache_dir=str(ro))
        run = edged("check", "-c", str(cfg))
        assert run.returncode == 2
        assert f"state_dir: {tmp_path / 'a-file' / 'state'}: cannot be created: {tmp_path / 'a-file'} is not a " \
               "directory" in run.stderr
        assert f"cache_dir: {ro}: not writable by uid {os.geteuid()}" in run.stderr
        r = edged("run", "-c", str(cfg))  # was exit 1: systemd restarted it every 10 s
        assert r.returncode == 2 and "state_dir:" in r.stderr
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_worker_python_and_tensorrt_off_device_and_on_a_jetson(tmp_path, repo):
    cfg = config(tmp_path, repo, models=[{"name": "chexnet-tiny", "backend": "tensorrt"}],
                 tensorrt={"worker_python": "/nonexistent/python3"})
    run = edged("check", "-c", str(cfg))
    assert run.returncode == 0, run.stderr  # this host is no Jetson: expected, so a warning
    assert "warning: models[0] chexnet-tiny (backend tensorrt): the worker Python cannot be run " \
           "(/nonexistent/python3: no such interpreter); this host is not a Jetson" in run.stderr
    run = edged("check", "-c", str(config(tmp_path, repo, models=[{"name": "chexnet-tiny", "backend": "auto"}])))
    assert run.returncode == 0 and "TensorRT will not be used" in run.stderr  # this host's python3: no tensorrt
    jetson = tmp_path / "jetson"
    (jetson / "etc").mkdir(parents=True)
    (jetson / "etc" / "nv_tegra_release").write_text("# R35 (release), REVISION: 4.1, GCID: 1, BOARD: t186ref\n")
    cfg = config(tmp_path, repo, models=[{"name": "chexnet-tiny", "backend": "tensorrt"}],
                 tensorrt={"worker_python": "/nonexistent/python3"},
                 power={"sysroot": str(jetson), "control_socket": str(tmp_path / "ctl.sock")})
    run = edged("check", "-c", str(cfg))
    assert run.returncode == 2 and "error: models[0] chexnet-tiny (backend tensorrt): the worker Python" in run.stderr


def test_connect_tries_the_broker(tmp_path, repo):
    dead = free_port()
    run = edged("check", "--connect", "-c", str(config(tmp_path, repo, mqtt={"host": "127.0.0.1", "port": dead})))
    assert run.returncode == 2 and f"mqtt: cannot connect to broker 127.0.0.1:{dead}: connection refused" in run.stderr
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "edge-node", "right"], check=True)
    (tmp_path / "broker").mkdir()
    broker = LocalBroker(tmp_path / "broker", extra_conf=f"password_file {passwd}\n")
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    (tmp_path / "user").write_text("edge-node\n")
    with broker:
        for password, expect in (("wrong", "refused: Not authorized"), ("right", "mqtt: connected to broker")):
            (tmp_path / "pass").write_text(password + "\n")
            cfg = config(tmp_path, repo, mqtt={"host": "127.0.0.1", "port": broker.port,
                                               "username_file": str(tmp_path / "user"),
                                               "password_file": str(tmp_path / "pass")})
            run = edged("check", "--connect", "-c", str(cfg))
            assert expect in run.stdout + run.stderr, run.stderr
            assert run.returncode == (0 if password == "right" else 2)


def test_check_of_an_image_runs_nothing_from_it(tmp_path, repo):
    root = tmp_path / "rootfs"
    (root / "etc" / "edged").mkdir(parents=True)
    (root / "opt" / "edged").mkdir(parents=True)
    shutil.copytree(repo, root / "opt" / "edged" / "engines")
    cfg = root / "etc" / "edged" / "edged.yaml"
    cfg.write_text(textwrap.dedent("""\
        node_id: ward-1
        model_repository: /opt/edged/engines
        models: [{name: chexnet-tiny, backend: auto}]
        """))
    run = edged("check", "-c", str(cfg))
    assert run.returncode == 0, run.stderr
    assert f"checking as installed under {root}" in run.stdout
    assert "tensorrt.worker_python /usr/bin/python3 is not in the image" in run.stderr


def test_a_shared_site_key_is_found_before_start(tmp_path, repo):
    cfg = config(tmp_path, repo)
    (tmp_path / "state").mkdir()
    key = tmp_path / "state" / "site.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o644)
    run = edged("check", "-c", str(cfg))
    assert run.returncode == 2 and f"{key}: the site key is readable by group or others (mode 644)" in run.stderr
    assert edged("run", "-c", str(cfg)).returncode == 2  # was 1: restarted every 10 s
