"""``power_checks`` (the power rows of ``edged selftest``) on fake device trees, and on this x86 VM."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from edged.power.checks import _energy_windows, power_checks
from edged.power.config import PowerConfig
from edged.power.rails import Ina3221Hwmon

STANDINS = Path(__file__).resolve().parent / "bin"


def rows_by_target(rows: list[dict]) -> dict[str, dict]:
    return {r["target"]: r for r in rows}


def fast_rails(tree) -> None:
    """The fake INA3221 says 20 ms instead of NVIDIA's 430 ms, so the energy windows finish quickly."""
    for f in tree.root.glob("sys/devices/platform/**/hwmon/hwmon*/update_interval"):
        f.write_text("20\n")


@pytest.fixture
def short_windows(monkeypatch):
    """Tests about other rows skip the 1 s energy window (the full set runs in the Orin NX test)."""
    from edged.power import checks

    monkeypatch.setattr(checks, "WINDOWS_S", (0.01,))


def test_every_row_has_the_interface_shape_and_is_json(tmp_path):
    rows = power_checks(PowerConfig(sysroot=tmp_path))
    assert rows and all(set(r) == {"group", "target", "status", "note", "data"} for r in rows)
    assert all(r["group"] == "power" and r["status"] in ("PASS", "FAIL", "SKIP") and r["note"] for r in rows)
    json.dumps(rows)


def test_this_x86_vm_skips_everything_and_says_why():
    rows = rows_by_target(power_checks(PowerConfig(), switch_modes=True, service_user="nobody"))
    for target in ("identity", "nvpmodel -p --verbose vs profile", "present CPUs", "nvpmodel -q as service user",
                   "nvpmodel -q as root", "mode switches", "jetson_clocks on/off"):
        assert rows[target]["status"] == "SKIP", rows[target]
    assert "not a Jetson" in rows["identity"]["note"] and "not a Jetson" in rows["jetson_clocks on/off"]["note"]
    assert "not a Jetson" in rows["nvpmodel -q as root"]["note"]
    if rows["power rails"]["status"] == "SKIP":  # a host with readable RAPL measures its CPU package instead
        assert "ina3221" in rows["power rails"]["note"] and "rapl" in rows["power rails"]["note"]
        assert rows["energy windows"]["status"] == "SKIP"
    else:
        assert rows["power rails"]["data"]["source"] == "rapl"


def test_a_fake_orin_nx_passes_every_check(jetson):
    tree = jetson("orin-nx")  # current 2 15W
    fast_rails(tree)
    rows = rows_by_target(power_checks(PowerConfig(sysroot=tree.root), switch_modes=True))
    failed = {t: r["note"] for t, r in rows.items() if r["status"] == "FAIL"}
    assert failed == {}
    ident = rows["identity"]["data"]
    assert ident["profile"] == "jetson-orin-nx-16gb-p3767-0000" and ident["nvpmodel_conf_name"] == "nvpmodel_p3767_0000.conf"
    assert ident["nv_tegra_release"].startswith("# R36 (release), REVISION: 4.3") and ident["stack"]["jetpack"] == "6.1/6.2"
    assert rows["nvpmodel -p --verbose vs profile"]["data"]["nvpmodel"] == {"0": "MAXN", "1": "10W", "2": "15W", "3": "25W"}
    assert rows["present CPUs"]["note"] == "8 CPUs present"
    assert rows["nvpmodel -q as root"]["data"]["id"] == 2
    assert rows["nvpmodel -q as service user"]["status"] == "SKIP"
    # every other mode, then back: 2->0 and 1->3 need a reboot (masks), 2->1 and 1->2 switch live
    switches = {t: r["data"] for t, r in rows.items() if t.startswith("switch ")}
    assert [(d["from"], d["to"], d["outcome"], d["reboot_prompted"]) for d in switches.values()] == [
        (2, 0, "pending_reboot", True), (2, 1, "ok", False), (1, 3, "pending_reboot", True), (1, 2, "ok", False)]
    assert switches["switch 2 -> 1 10W"]["verification"]["verified"] is True
    assert tree.status() == "pmode:0002\n" and tree.online() == "0-3"  # back where it started
    assert rows["jetson_clocks on/off"]["data"] == {"before": False, "on": True, "show": True, "off": False}
    assert rows["power rails"]["data"]["refresh_ms"] == 20.0 and rows["VDD_IN >= each rail"]["status"] == "PASS"
    windows = rows["energy windows"]["data"]["windows"]
    assert [w["window_ms"] for w in windows] == [10, 50, 1000]
    assert all(w["meter_mj"] == pytest.approx(6048.0 * w["duration_ms"] / 1000, rel=0.01) for w in windows)


def test_a_wrong_reboot_prediction_is_reported(jetson, monkeypatch, short_windows):
    """Xavier NX predicts no reboot anywhere; a conf/version that prompts for every switch is caught."""
    tree = jetson("xavier-nx")
    fast_rails(tree)
    monkeypatch.setenv("FAKE_NVPMODEL_REBOOT", "always")
    rows = power_checks(PowerConfig(sysroot=tree.root), switch_modes=True)
    switches = [r for r in rows if r["target"].startswith("switch ")]
    assert len(switches) == 9 and all(r["status"] == "FAIL" for r in switches[:-1])
    assert "predicted reboot no, nvpmodel asked for one: the prediction is wrong" in switches[0]["note"]
    assert switches[-1]["note"] == "already in this mode"


def test_a_conf_that_disagrees_with_the_profile_and_a_bad_rail_fail(jetson, short_windows):
    tree = jetson("orin-nano")
    conf = next((tree.root / "etc/nvpmodel").iterdir())
    conf.write_text(conf.read_text().replace("NAME=7W", "NAME=7W_NEW"))
    hwmon = next(tree.root.glob("sys/devices/platform/**/hwmon/hwmon*"))
    (hwmon / "curr2_input").write_text("5000\n")  # VDD_CPU_GPU_CV above VDD_IN: a mislabelled or broken channel
    fast_rails(tree)
    rows = rows_by_target(power_checks(PowerConfig(sysroot=tree.root)))
    assert rows["nvpmodel -p --verbose vs profile"]["status"] == "FAIL"
    assert "mode 1: profile 7W, nvpmodel 7W_NEW" in rows["nvpmodel -p --verbose vs profile"]["note"]
    assert rows["VDD_IN >= each rail"]["status"] == "FAIL" and "VDD_CPU_GPU_CV above VDD_IN" in rows["VDD_IN >= each rail"]["note"]


def test_agx_boards_have_no_input_rail_to_compare(jetson, short_windows):
    tree = jetson("agx-orin")
    fast_rails(tree)
    rows = rows_by_target(power_checks(PowerConfig(sysroot=tree.root)))
    assert rows["VDD_IN >= each rail"]["status"] == "SKIP" and "rail-sum" in rows["VDD_IN >= each rail"]["note"]
    assert rows["mode switches"]["status"] == "SKIP" and "explicit consent" in rows["mode switches"]["note"]


def test_energy_windows_catch_a_meter_that_disagrees(jetson, monkeypatch):
    tree = jetson("orin-nx")
    fast_rails(tree)
    source = Ina3221Hwmon.discover(tree.root)
    from edged.power import checks

    monkeypatch.setattr(checks.EnergyMeter, "wait_energy_mj", lambda self, t0, t1, timeout=None: 1.0)
    row = _energy_windows(source, (0.01,))
    assert row["status"] == "FAIL" and row["data"]["windows"][0]["meter_mj"] == 1.0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run nvpmodel as another user")
def test_nvpmodel_query_as_the_service_user(build_tree_fn, monkeypatch, short_windows):
    """Really as another user (nobody): the stand-in then prints the emc_iso_cap errors a non-root -q gets."""
    base = Path(tempfile.mkdtemp(prefix="edged-checks-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        tree = build_tree_fn(base / "root", "orin-nx")
        bindir = base / "bin"
        bindir.mkdir()
        text = (STANDINS / "nvpmodel").read_text().split("\n", 1)[1]
        (bindir / "nvpmodel").write_text(f"#!{shutil.which('python3', path='/usr/bin:/bin')} -IS\n{text}")
        (bindir / "nvpmodel").chmod(0o755)
        (tree.root / "var/log").mkdir(exist_ok=True)
        (tree.root / "var/log/fake-nvpmodel.log").touch()
        (tree.root / "var/log/fake-nvpmodel.log").chmod(0o666)
        for path in [tree.root, *tree.root.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0))
        monkeypatch.setenv("FAKE_JETSON_ROOT", str(tree.root))
        monkeypatch.delenv("FAKE_EUID", raising=False)
        cfg = PowerConfig(sysroot=tree.root, nvpmodel=str(bindir / "nvpmodel"))
        rows = rows_by_target(power_checks(cfg, service_user="nobody"))
        row = rows["nvpmodel -q as nobody"]
        assert row["status"] == "PASS" and row["data"]["id"] == 2, row
        assert any("emc_iso_cap: 13" in m for m in row["data"]["messages"])
        assert pwd.getpwnam("nobody").pw_uid != 0
        assert rows["nvpmodel -q as root"]["data"]["messages"] == []
        log = [json.loads(line) for line in (tree.root / "var/log/fake-nvpmodel.log").read_text().splitlines()]
        assert {e["euid"] for e in log if e["argv"] == ["-q"]} == {0, pwd.getpwnam("nobody").pw_uid}
    finally:
        shutil.rmtree(base, ignore_errors=True)
