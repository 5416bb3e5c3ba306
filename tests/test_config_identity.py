"""One image, many devices: node id from the device, drop-ins per device/site, a site-wide key."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edged.config import identity
from edged.config.loader import ConfigError, load_config, load_config_notes
from edged.privacy import Pseudonymizer, load_site_key
from edged.service.install import install
from helpers import REPO

MID = "3f2a9c0b1d2e4f60718293a4b5c6d7e8"


def edged(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=60)


def device(tmp_path: Path, machine_id: str = MID, hostname: str = "jetson") -> Path:
    root = tmp_path / "device"
    (root / "etc").mkdir(parents=True)
    (root / "etc/machine-id").write_text(machine_id + ("\n" if machine_id else ""))
    (root / "etc/hostname").write_text(hostname + "\n")
    return root


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edged.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("placeholder", ["$machine-id", "edged-unconfigured"])
def test_placeholder_becomes_the_machine_id(tmp_path: Path, placeholder: str) -> None:
    root = device(tmp_path)
    cfg, notes = load_config_notes(config(tmp_path, f"node_id: {placeholder}\n"), root=root)
    assert cfg.node_id == f"node-{MID[:12]}" and cfg.client_id == f"edged-node-{MID[:12]}"
    assert "image placeholder" in notes[0] and ":1: node_id" in notes[0]
    assert "every device flashed from it shares it" in notes[0], "an image with a machine id is a mistake"


def test_two_devices_of_one_image_get_two_ids(tmp_path: Path) -> None:
    path = config(tmp_path, "node_id: '$machine-id'\n")
    a = load_config(path, root=device(tmp_path / "a"))
    b = load_config(path, root=device(tmp_path / "b", machine_id="9" * 32))
    assert a.node_id != b.node_id


def test_hostname_placeholder_and_its_fallback(tmp_path: Path) -> None:
    path = config(tmp_path, "node_id: '$hostname'\n")
    assert load_config(path, root=device(tmp_path / "a", hostname="xray-ward3.hospital.local")).node_id == "xray-ward3"
    assert load_config(path, root=device(tmp_path / "b", hostname="localhost")).node_id == f"node-{MID[:12]}"


def test_image_before_first_boot_and_live_device_without_identity(tmp_path: Path) -> None:
    image = device(tmp_path, machine_id="", hostname="localhost")
    cfg, notes = load_config_notes(config(tmp_path, "node_id: '$machine-id'\n"), root=image)
    assert cfg.node_id == "node-first-boot"
    assert "each device derives its own at first boot" in notes[0]
    # The same state on a running device is an error, not a silent shared id.
    real = identity.machine_id
    identity.machine_id = lambda root=Path("/"): None  # type: ignore[assignment]
    try:
        with pytest.raises(ConfigError, match="needs a device identity"):
            load_config(config(tmp_path, "node_id: '$machine-id'\n"))
    finally:
        identity.machine_id = real


def test_check_warns_about_the_placeholder(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    install(root, REPO, run_tools=False)
    (root / "etc/machine-id").write_text("")
    run = edged("check", "-c", str(root / "etc/edged/edged.yaml"))
    assert run.returncode == 0, run.stderr
    assert "warning:" in run.stderr and "node_id: '$machine-id' is the image placeholder" in run.stderr
    assert "each device derives its own at first boot from /etc/machine-id" in run.stderr
    assert "(node node-first-boot," in run.stdout


def test_dropins_merge_in_name_order(tmp_path: Path) -> None:
    path = config(tmp_path, """\
        node_id: ward-3
        dicom:
          port: 11112
          ae_title: EDGED
        mqtt:
          host: 127.0.0.1
        """)
    (tmp_path / "edged.d").mkdir()
    (tmp_path / "edged.d/10-site.yaml").write_text("mqtt:\n  host: 10.0.0.5\n  port: 8883\n")
    (tmp_path / "edged.d/20-device.yaml").write_text("node_id: ward-4\nmqtt:\n  port: 1884\n")
    (tmp_path / "edged.d/ignored.yml.bak").write_text("node_id: nope\n")
    cfg = load_config(path)
    assert cfg.node_id == "ward-4" and cfg.mqtt.host == "10.0.0.5" and cfg.mqtt.port == 1884
    assert cfg.dicom.port == 11112 and cfg.dicom.ae_title == "EDGED"
    assert load_config(path, ["mqtt.port=1999"]).mqtt.port == 1999, "--set wins over drop-ins"


def test_dropin_errors_name_their_file_and_line(tmp_path: Path) -> None:
    path = config(tmp_path, "node_id: ward-3\ndicom:\n  port: 11112\n")
    folder = tmp_path / "edged.d"
    folder.mkdir()
    (folder / "10-site.yaml").write_text("mqtt:\n  host: broker\n  portt: 8883\n")
    (folder / "20-device.yaml").write_text("# device\ndicom:\n  ae_title: WAY-TOO-LONG-AE-TITLE\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    problems = err.value.problems
    assert any(p.startswith(f"{folder / '10-site.yaml'}:3: mqtt.portt: unknown key") for p in problems), problems
    assert any(p.startswith(f"{folder / '20-device.yaml'}:3: dicom.ae_title:") for p in problems), problems
    (folder / "30-broken.yaml").write_text("mqtt: [\n")
    with pytest.raises(ConfigError, match=r"30-broken.yaml:\d+: YAML syntax"):
        load_config(path)
    (folder / "30-broken.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="30-broken.yaml:1: \\(top level\\): expected a mapping"):
        load_config(path)


def test_a_later_dropin_replacing_a_list_owns_its_errors(tmp_path: Path) -> None:
    path = config(tmp_path, "models:\n  - name: chexnet\n    backend: nope\n")
    (tmp_path / "edged.d").mkdir()
    (tmp_path / "edged.d/10.yaml").write_text("\n\nmodels:\n  - name: chexnet\n    backend: cuda\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems[0].startswith(f"{tmp_path / 'edged.d/10.yaml'}:5: models[0].backend:")


def test_a_provisioned_site_key_gives_every_device_the_same_pseudonyms(tmp_path: Path) -> None:
    key = tmp_path / "site.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o640)
    devices = [load_config(config(tmp_path, f"state_dir: {tmp_path / n}\nsite_key_file: {key}\n")) for n in "ab"]
    keys = [load_site_key(c.site_key_path, provisioned=c.site_key_file is not None) for c in devices]
    assert Pseudonymizer(keys[0]).pseudonym("study", "1.2.3") == Pseudonymizer(keys[1]).pseudonym("study", "1.2.3")
    assert not (tmp_path / "a/site.key").exists(), "a provisioned key is read, never created"

    default = [load_config(config(tmp_path, f"state_dir: {tmp_path / n}\n")) for n in "cd"]
    per_device = [load_site_key(c.site_key_path, provisioned=False) for c in default]
    assert per_device[0] != per_device[1], "the default stays one key per device"


def test_a_bad_provisioned_site_key_is_refused_by_check(tmp_path: Path) -> None:
    key = tmp_path / "site.key"
    path = config(tmp_path, f"site_key_file: {key}\nmodel_repository: {REPO / 'engines'}\n")
    run = edged("check", "-c", str(path))
    assert run.returncode == 2 and "site_key_file" in run.stderr and "cannot read" in run.stderr
    key.write_bytes(b"short")
    key.chmod(0o600)
    assert "at least 32 random bytes" in edged("check", "-c", str(path)).stderr
    key.write_bytes(os.urandom(32))
    key.chmod(0o644)
    assert "readable by others" in edged("check", "-c", str(path)).stderr
    key.chmod(0o640)
    run = edged("check", "-c", str(path))
    assert run.returncode == 0, run.stderr
