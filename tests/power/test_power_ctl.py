"""edgectl against fake module trees, the stand-in nvpmodel on PATH, and a real control socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edged.control import edgectl as ctl
from edged.power.nvpmodel import Nvpmodel, NvpmodelError, parse_clocks_show, parse_query

ALL_PROFILES = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "power_profiles").glob("*.yaml"))


@pytest.fixture
def run(capsys, sockdir):
    """``run(*argv, socket=None) -> (exit, stdout, stderr)``; without a daemon the socket path is absent."""

    def call(*argv: str, socket: Path | None = None) -> tuple[int, str, str]:
        rc = ctl.main(["--socket", str(socket or sockdir / "absent.sock"), *argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return call


def _m_calls(tree) -> list[dict]:
    return [e for e in tree.nvpmodel_log() if "-m" in e["argv"]]


@pytest.mark.parametrize(
    "kind", [f"profile:{m}" for m in ALL_PROFILES] + ["nano", "agx-xavier", "xavier-nx", "agx-orin", "orin-nx"]
)
def test_power_list_on_each_simulated_module(jetson, run, kind):
    tree = jetson(kind)
    rc, out, err = run("power", "list")
    assert rc == 0 and err == ""
    assert tree.profile.title in out
    for mode_id, mode in tree.profile.modes.items():
        assert any(line.split()[:2] in ([str(mode_id), mode.name], ["*D", str(mode_id)]) for line in out.splitlines())
    current = [line for line in out.splitlines() if line.startswith("*")]
    assert len(current) == 1 and f" {tree.profile.default_mode} " in current[0]
    rc, out, _ = run("power", "list", "--json")
    data = json.loads(out)
    assert [m["id"] for m in data["modes"]] == sorted(tree.profile.modes)
    assert data["module"] == tree.profile.module and data["current"]["id"] == tree.profile.default_mode
    assert data["warnings"] == []


def test_power_list_on_generic_linux_says_why(tmp_path, run, monkeypatch):
    monkeypatch.setenv("EDGED_SYSROOT", str(tmp_path))
    rc, out, _ = run("power", "list")
    assert rc == 5 and "not a Jetson" in out


def test_set_needing_reboot_is_pending_and_changes_nothing(jetson, run, daemon):
    tree = jetson("agx-orin")  # current 2 MODE_30W (mask 240) -> eco = 1 MODE_15W (mask 248)
    rc, out, _ = run("power", "set", "eco", socket=daemon.path)
    assert rc == 3 and out.startswith("pending reboot: mode 1 MODE_15W")
    assert tree.status() == "pmode:0002\n" and not (tree.root / "run/fake-nvpmodel-rebooted").exists()
    [call] = _m_calls(tree)
    assert call["stdin"] == "" and call["stdin_isatty"] is False  # the prompt read EOF: edged never answered it
    [event] = daemon.events()
    assert event["outcome"] == "pending_reboot" and event["from"] == {"id": 2, "name": "MODE_30W"}
    assert event["to"] == {"id": 1, "name": "MODE_15W"} and event["who"]


def test_reboot_needs_confirmation(jetson, run, monkeypatch):
    tree = jetson("agx-orin")
    rc, out, _ = run("power", "set", "1", "--reboot")  # stdin is not a terminal under pytest
    assert rc == 4 and "needs --yes" in out and tree.status() == "pmode:0002\n"
    assert [c["stdin"] for c in _m_calls(tree)] == [""]

    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Tty())
    monkeypatch.setattr("builtins.input", lambda prompt: "no")
    rc, out, _ = run("power", "set", "1", "--reboot")
    assert rc == 4 and "reboot not confirmed" in out and tree.status() == "pmode:0002\n"


def test_reboot_with_yes_tells_the_daemon_first(jetson, run, daemon):
    tree = jetson("agx-orin")
    marker = tree.root / "run/fake-nvpmodel-rebooted"
    seen: list[tuple[dict, bool]] = []
    daemon.server.handlers["power.changed"] = lambda args, peer: seen.append((args, marker.exists())) or {}
    rc, out, _ = run("power", "set", "MODE_15W", "--reboot", "--yes", socket=daemon.path)
    assert rc == 0 and out.startswith("rebooting: mode 1 MODE_15W") and "daemon: told" in out
    assert [c["stdin"] for c in _m_calls(tree)] == ["", "YES\n"]  # declined first, YES only after --reboot --yes
    assert marker.exists() and tree.status() == "pmode:0001\n"
    assert [(args["outcome"], before_reboot) for args, before_reboot in seen] == [("rebooting", False)]


def test_successful_switch_is_verified_and_reported(jetson, run, daemon):
    tree = jetson("xavier-nx")  # default 5 MODE_10W_DESKTOP; all masks 1: no reboot
    rc, out, _ = run("power", "set", "max", socket=daemon.path)
    assert rc == 0 and out.startswith("switched: mode 8 MODE_20W_6CORE (was 5 MODE_10W_DESKTOP, now 8 MODE_20W_6CORE)")
    assert "batching: max_batch_size 8, max_queue_delay_ms 15" in out and "daemon: told" in out
    assert tree.status() == "pmode:0008\n"
    argv = [e["argv"] for e in tree.nvpmodel_log()]
    assert argv.index(["-m", "8"]) < len(argv) - 1 and argv[-1] == ["-q"]  # re-queried after the switch
    [event] = daemon.events()
    assert (event["outcome"], event["from"]["id"], event["to"]["id"]) == ("ok", 5, 8)
    rc, out, _ = run("power", "get", "--json")
    assert json.loads(out)["current"]["id"] == 8 and json.loads(out)["current"]["batching"]["max_batch_size"] == 8


def test_silent_refusal_is_caught_by_verification(jetson, run, daemon, monkeypatch):
    tree = jetson("xavier-nx")
    monkeypatch.setenv("FAKE_NVPMODEL_IGNORE", "1")
    rc, out, _ = run("power", "set", "8", socket=daemon.path)
    assert rc == 1 and out.startswith("FAILED") and "still shows mode 5" in out
    assert daemon.events()[0]["outcome"] == "failed" and tree.status() == "pmode:0005\n"


def test_nvpmodel_error_fails_with_its_reason(jetson, run, monkeypatch):
    jetson("xavier-nx")
    monkeypatch.setenv("FAKE_NVPMODEL_FAIL", "1")
    rc, out, _ = run("power", "set", "8")
    assert rc == 1 and "railgate_enable" in out


def test_refusals(jetson, run, monkeypatch):
    tree = jetson("orin-nx")
    rc, out, _ = run("power", "set", "turbo")
    assert rc == 2 and "unknown power mode 'turbo'" in out
    rc, out, _ = run("power", "set", "2")
    assert rc == 0 and out.startswith("unchanged")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    rc, out, _ = run("power", "set", "0")
    assert rc == 4 and "needs root" in out
    rc, out, _ = run("power", "clocks", "on")
    assert rc == 4 and "needs root" in out
    assert _m_calls(tree) == [] and tree.status() == "pmode:0002\n"


def test_get_tolerates_nonroot_noise_and_missing_nvpmodel(jetson, run, monkeypatch):
    jetson("orin-nx", current=3)
    monkeypatch.setenv("FAKE_NVPMODEL_NONROOT", "1")
    rc, out, _ = run("power", "get")
    assert rc == 0 and out.startswith("mode: 3 25W (from nvpmodel -q)")
    rc, out, _ = run("power", "get", "--nvpmodel", "/nonexistent/nvpmodel", "--json")
    current = json.loads(out)["current"]
    assert rc == 0 and current["id"] == 3 and current["source"] == "/var/lib/nvpmodel/status"


def test_status_with_and_without_daemon(jetson, run, daemon):
    jetson("nano")
    rc, out, _ = run("status", "--json", socket=daemon.path)
    data = json.loads(out)
    assert rc == 0 and data["daemon"]["running"] is True and data["daemon"]["models"] == ["cxr"]
    assert data["power_mode"]["name"] == "MAXN" and data["telemetry"]["power"]["total_rail"] == "POM_5V_IN"
    rc, out, _ = run("status")
    assert rc == 1 and "daemon: not running — edged is not running" in out and "power mode: 0 MAXN" in out
    assert "power: " in out and "mW (ina3221" in out and "temperatures: PMIC-Die 100.0 C, AO-therm 38.5 C, CPU-therm 35.0 C" in out


def test_clocks_on_off_status(jetson, run, daemon):
    tree = jetson("agx-orin")
    assert run("power", "clocks")[1].strip() == "jetson_clocks: off"
    rc, out, _ = run("power", "clocks", "on", socket=daemon.path)
    assert rc == 0 and out.strip() == "jetson_clocks: on" and (tree.root / "var/lib/edged/jetson_clocks.conf").exists()
    assert daemon.events("power.clocks")[0]["on"] is True
    rc, out, _ = run("power", "clocks", "off")
    assert (
        rc == 0
        and out.strip() == "jetson_clocks: off"
        and not (tree.root / "var/lib/edged/jetson_clocks.conf").exists()
    )
    rc, out, _ = run("power", "clocks", "off")
    assert rc == 1 and "nothing to restore" in out


def test_edgectl_runs_as_a_process(jetson, sockdir):
    jetson("orin-nano")
    proc = subprocess.run(
        [sys.executable, "-m", "edged.control.edgectl", "power", "list", "--socket", str(sockdir / "x.sock")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0 and "7W" in proc.stdout and "Jetson Orin Nano 8GB" in proc.stdout


def test_switch_timeout_kills_a_hung_nvpmodel(jetson, monkeypatch):
    tree = jetson("xavier-nx")
    monkeypatch.setenv("FAKE_NVPMODEL_HANG", "1")
    result = Nvpmodel(switch_timeout_s=0.5).set_mode(8)
    assert result.outcome == "failed" and "timed out after 0.5 s" in result.reason
    assert result.after is not None and result.after.id == 5 and tree.status() == "pmode:0005\n"


def test_query_and_clocks_parsing():
    q = parse_query(
        "NVPM ERROR: Error opening /sys/kernel/nvpmodel_emc_cap/emc_iso_cap: 13\nNV Power Mode: MODE_15W\n2\n"
    )
    assert (q.id, q.name) == (2, "MODE_15W") and q.messages[0].startswith("NVPM ERROR")
    with pytest.raises(NvpmodelError, match="cannot read the mode"):
        parse_query("NVPM ERROR: something else\n")
    show = (
        "cpu0: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=1420800\n"
        "cpu1: Online=0 Governor=schedutil MinFreq=729600 MaxFreq=729600 CurrentFreq=0\n"
        "GPU MinFreq=306000000 MaxFreq=1300500000 CurrentFreq=306000000\n"
    )
    assert parse_clocks_show(show).on is False
    pinned = show.replace("MinFreq=729600 MaxFreq=2201600", "MinFreq=2201600 MaxFreq=2201600").replace(
        "MinFreq=306000000", "MinFreq=1300500000"
    )
    assert parse_clocks_show(pinned).on is True and parse_clocks_show("").on is None


@pytest.mark.parametrize(
    "override",
    [
        ("--nvpmodel", "{evil}"),
        ("--config", "{cfg}"),
        ("--root", "{tree}"),
        ("--profiles", "{tree}"),
        ("env", "EDGED_CONFIG={cfg}"),
        ("env", "EDGED_SYSROOT={tree}"),
    ],
    ids=["--nvpmodel", "--config", "--root", "--profiles", "EDGED_CONFIG", "EDGED_SYSROOT"],
)
def test_sudo_refuses_what_would_choose_what_root_runs(jetson, run, monkeypatch, tmp_path, override):
    """Under sudo (root + SUDO_USER) a caller-named nvpmodel, config, root or profile dir is refused."""
    tree = jetson("orin-nx")
    monkeypatch.delenv("EDGED_SYSROOT")  # the fixture's own override; each case adds back one
    ran = tmp_path / "evil-ran"
    evil = tmp_path / "evil"
    evil.write_text(f"#!/bin/sh\ntouch {ran}\necho 'NV Power Mode: MAXN'\necho 0\n")
    evil.chmod(0o755)
    cfg = tmp_path / "edged.yaml"
    cfg.write_text(f"power:\n  nvpmodel: {evil}\n  jetson_clocks: {evil}\n  sysroot: {tree.root}\n")
    values = {"evil": evil, "cfg": cfg, "tree": tree.root}
    kind, value = override
    value = value.format(**values)
    argv = ["power", "set", "0"]
    if kind == "env":
        name, _, env_value = value.partition("=")
        monkeypatch.setenv(name, env_value)
    else:
        argv += [kind, value]
    monkeypatch.setenv("SUDO_USER", "tech")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    rc, out, err = run(*argv)
    refused = kind if kind != "env" else value.partition("=")[0]
    assert (rc, out) == (2, "") and f"refusing {refused} under sudo" in err
    assert not ran.exists() and _m_calls(tree) == [] and tree.status() == "pmode:0002\n"
    rc, _, err = run("power", "clocks", "on", *([] if kind == "env" else [kind, value]))
    assert rc == 2 and "under sudo" in err and not ran.exists()


def test_sudo_without_overrides_runs_and_root_without_sudo_keeps_them(jetson, run, monkeypatch):
    """Control for the refusal: it needs both root and SUDO_USER, and nothing else is refused."""
    tree = jetson("xavier-nx")  # default 5; switching to 8 needs no reboot
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.delenv("SUDO_USER", raising=False)
    rc, out, _ = run("power", "set", "8")  # root without sudo (tests, a root shell): the fake tree is used
    assert rc == 0 and out.startswith("switched: mode 8") and tree.status() == "pmode:0008\n"
    monkeypatch.setenv("SUDO_USER", "tech")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # not root: nothing runs as root, overrides are fine
    rc, out, _ = run("power", "get", "--nvpmodel", "/nonexistent/nvpmodel")
    assert rc == 0 and out.startswith("mode: 8")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.delenv("EDGED_SYSROOT")
    rc, out, err = run("power", "list")  # sudo, no override: the real host (no Jetson here: exit 5)
    assert "under sudo" not in err and rc in (0, 5)
