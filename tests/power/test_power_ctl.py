"""edgectl against fake module trees, the stand-in nvpmodel on PATH, and a real control socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edged.control import edgectl as ctl
from edged.power.clocks import parse_clocks_show
from edged.power.nvpmodel import Nvpmodel, NvpmodelError, parse_query

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
    "kind",
    [f"profile:{m}" for m in ALL_PROFILES]
    + ["nano", "agx-xavier", "agx-xavier-industrial", "xavier-nx", "agx-orin", "agx-orin-64gb", "orin-nx"],
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
    assert "reboot: predicted yes (GPU power-gating changes (TPC_PG_MASK 240 -> 248)); nvpmodel asked for one" in out
    assert tree.online() == "0-7"  # the board still runs mode 2's eight CPUs
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
    assert "verified: verified on the board" in out and "reboot: predicted no" in out
    assert tree.online() == "0-5" and tree.read("/sys/devices/system/cpu/cpu4/cpufreq/scaling_max_freq") == "1420800"
    assert tree.status() == "pmode:0008\n"
    argv = [e["argv"] for e in tree.nvpmodel_log()]
    assert argv.index(["-m", "8"]) < len(argv) - 1 and argv[-1] == ["-q"]  # re-queried after the switch
    [event] = daemon.events()
    assert (event["outcome"], event["from"]["id"], event["to"]["id"]) == ("ok", 5, 8)
    rc, out, _ = run("power", "get", "--json")
    assert json.loads(out)["current"]["id"] == 8 and json.loads(out)["current"]["batching"]["max_batch_size"] == 8


def test_silent_refusal_is_caught_on_the_board_not_by_a_second_query(jetson, run, daemon, monkeypatch):
    """nvpmodel records mode 8 in its status file (so -q says 8) but applies nothing: the board decides."""
    tree = jetson("xavier-nx")
    monkeypatch.setenv("FAKE_NVPMODEL_IGNORE", "1")
    rc, out, _ = run("power", "set", "8", socket=daemon.path)
    assert rc == 1 and out.startswith("FAILED") and "now 8 MODE_20W_6CORE" in out  # -q believes it
    assert "the board does not run mode 8: online CPUs is 0-3, mode 8 sets 0-5" in out
    assert daemon.events()[0]["outcome"] == "failed" and tree.online() == "0-3"


def test_clocks_that_did_not_move_fail_verification(jetson, run, monkeypatch):
    """Same CPUs and masks before and after (Orin Nano super 25W -> MAXN_SUPER): only the clocks tell."""
    tree = jetson("profile:jetson-orin-nano-8gb-p3767-0003-super", current=1)
    monkeypatch.setenv("FAKE_NVPMODEL_IGNORE", "1")
    rc, out, _ = run("power", "set", "2")
    assert rc == 1 and "CPU_A78_0 max is 1344000, mode 2 sets hardware maximum (1984000)" in out
    assert "GPU max_freq is 918000000, mode 2 sets hardware maximum (1173000000)" in out
    monkeypatch.delenv("FAKE_NVPMODEL_IGNORE")
    tree.root.joinpath("var/lib/nvpmodel/status").write_text("pmode:0001\n")
    rc, out, _ = run("power", "set", "2")
    assert rc == 0 and "verified: verified on the board" in out
    assert tree.read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq") == "1984000"


def test_nvpmodel_error_fails_with_its_reason(jetson, run, monkeypatch):
    jetson("xavier-nx")
    monkeypatch.setenv("FAKE_NVPMODEL_FAIL", "1")
    rc, out, _ = run("power", "set", "8")
    assert rc == 1 and "Error writing 1 to /sys/devices/gpu.0/tpc_pg_mask: 19" in out


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
    monkeypatch.setenv("FAKE_EUID", "1000")
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
    assert "power: " in out and "mW (ina3221" in out
    # hottest first, and not the Nano's PMIC-Die, which always reads 100 °C
    assert "temperatures: AO-therm 38.5 C, CPU-therm 35.0 C" in out


STORE = "var/lib/edged/jetson_clocks.conf"


def test_clocks_on_off_status(jetson, run, daemon):
    tree = jetson("agx-orin")
    assert run("power", "clocks")[1].strip() == "jetson_clocks: off"
    rc, out, _ = run("power", "clocks", "on", socket=daemon.path)
    assert rc == 0 and out.strip() == "jetson_clocks: on (stored the clocks of mode 2 MODE_30W, then pinned)"
    assert (tree.root / STORE).exists() and json.loads((tree.root / (STORE + ".mode.json")).read_text())["id"] == 2
    assert tree.read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_min_freq") == "1728000"  # mode 2's cap
    assert daemon.events("power.clocks")[0]["on"] is True
    rc, out, _ = run("power", "clocks", "off")
    assert rc == 0 and out.strip() == "jetson_clocks: off (restored the clocks stored in mode 2 MODE_30W)"
    assert not (tree.root / STORE).exists()
    assert tree.read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_min_freq") == "729600"
    rc, out, _ = run("power", "clocks", "off")  # nothing stored: the current mode is re-applied instead
    assert rc == 0 and "no stored clocks; re-applied mode 2 MODE_30W instead" in out


def test_clocks_status_works_without_root(jetson, run, monkeypatch):
    """jetson_clocks refuses --show without root: the status comes from sysfs."""
    jetson("orin-nx")
    assert run("power", "clocks", "on")[0] == 0  # as root
    monkeypatch.setenv("FAKE_EUID", "1000")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    rc, out, _ = run("power", "clocks", "status", "--json")
    data = json.loads(out)
    assert rc == 0 and data["on"] is True and data["source"] == "sysfs" and set(data["cpus"]) == {"cpu0", "cpu1", "cpu2", "cpu3"}
    assert data["gpu"]["MinFreq"] == data["gpu"]["MaxFreq"] == 612000000


def test_clocks_on_after_a_reboot_finds_the_old_store_and_never_prompts(jetson, run):
    """After a reboot the clocks are unpinned but the store is still there: --store onto it would ask
    "Can I overwrite it? Y/N" (stdin closed: "already exists", exit 1). edged stores into a fresh file."""
    tree = jetson("orin-nx")
    (tree.root / STORE).parent.mkdir(parents=True)
    (tree.root / STORE).write_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_min_freq:115200\n")
    rc, out, _ = run("power", "clocks", "on")
    assert rc == 0 and "jetson_clocks: on" in out
    assert "scaling_min_freq:729600" in (tree.root / STORE).read_text()  # the state of this boot, not the old one
    assert not [p for p in (tree.root / STORE).parent.iterdir() if p.name.endswith(".new")]


def test_switch_turns_clocks_off_and_on_again_in_the_new_mode(jetson, run):
    tree = jetson("xavier-nx")  # mode 5: CPUs 0-3 at most 1907200 kHz
    assert run("power", "clocks", "on")[0] == 0
    rc, out, _ = run("power", "set", "8")  # mode 8: CPUs 0-5 at most 1420800 kHz
    assert rc == 0 and "jetson_clocks: turned off for the switch (restored the clocks stored in mode 5" in out
    assert "on again in mode 8 (stored the clocks of mode 8 MODE_20W_6CORE, then pinned)" in out
    for cpu in range(6):
        folder = f"/sys/devices/system/cpu/cpu{cpu}/cpufreq"
        assert tree.read(f"{folder}/scaling_min_freq") == tree.read(f"{folder}/scaling_max_freq") == "1420800"
    assert json.loads((tree.root / (STORE + ".mode.json")).read_text()) == {"id": 8, "name": "MODE_20W_6CORE"}
    assert run("power", "clocks", "off")[1].strip() == "jetson_clocks: off (restored the clocks stored in mode 8 MODE_20W_6CORE)"
    assert tree.read("/sys/devices/system/cpu/cpu4/cpufreq/scaling_max_freq") == "1420800"


def test_clocks_off_never_restores_a_store_from_another_mode(jetson, run, standins):
    """Mode 5's store restored in mode 8 would raise the CPU cap above mode 8's: re-apply mode 8 instead."""
    tree = jetson("xavier-nx")
    assert run("power", "clocks", "on")[0] == 0  # store taken in mode 5 (caps 1907200)
    env = {**os.environ}
    assert subprocess.run([str(standins / "nvpmodel"), "-m", "8"], env=env, stdin=subprocess.DEVNULL).returncode == 0
    assert subprocess.run([str(standins / "jetson_clocks")], env=env, stdin=subprocess.DEVNULL).returncode == 0
    rc, out, _ = run("power", "clocks", "off")
    assert rc == 0 and "the stored clocks are from mode 5 MODE_10W_DESKTOP; re-applied mode 8 MODE_20W_6CORE" in out
    for cpu in (0, 4):
        folder = f"/sys/devices/system/cpu/cpu{cpu}/cpufreq"
        assert tree.read(f"{folder}/scaling_max_freq") == "1420800" and tree.read(f"{folder}/scaling_min_freq") == "729600"
    assert not (tree.root / STORE).exists()


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


def test_reboot_prediction_per_soc_in_power_list(run, tmp_path, monkeypatch, standins, build_tree_fn):
    """Orin: a change of online CPUs predicts a reboot even with equal masks; otherwise nvpmodel decides."""

    def predictions(kind: str, current: int) -> dict[int, dict]:
        root = build_tree_fn(tmp_path / f"{kind}-{current}", kind, current=current).root
        monkeypatch.setenv("FAKE_JETSON_ROOT", str(root))
        monkeypatch.setenv("EDGED_SYSROOT", str(root))
        return {m["id"]: m["reboot"] for m in json.loads(run("power", "list", "--json")[1])["modes"]}

    nano4 = predictions("profile:jetson-orin-nano-4gb-p3767-0004", 0)  # all masks 252; 6 CPUs -> 4
    assert nano4[1]["needed"] is True and "online CPUs change (6 -> 4)" in nano4[1]["why"]
    assert nano4[0] == {"needed": False, "why": "same mode"}
    orin_nx = predictions("orin-nx", 2)  # 15W: 4 CPUs, mask 252
    assert {i: r["needed"] for i, r in orin_nx.items()} == {0: True, 1: None, 2: False, 3: True}
    assert "nvpmodel decides" in orin_nx[1]["why"]
    xavier = predictions("xavier-nx", 5)
    assert {r["needed"] for r in xavier.values()} == {False}  # Xavier: the CPU count alone never reboots
    nano = predictions("nano", 0)
    assert [r["needed"] for r in nano.values()] == [False, False]


def test_orin_cpu_count_change_prompts_and_is_reported_against_the_prediction(jetson, run):
    tree = jetson("profile:jetson-orin-nano-4gb-p3767-0004")  # 10W, 6 CPUs -> 7W_AI, 4 CPUs, same mask
    rc, out, _ = run("power", "set", "1")
    assert rc == 3 and "reboot: predicted yes (online CPUs change (6 -> 4)" in out and "nvpmodel asked for one" in out
    assert tree.online() == "0-5" and tree.status() == "pmode:0000\n"


def test_query_fails_when_no_mode_was_ever_set_and_set_still_works(jetson, run):
    tree = jetson("xavier-nx", status=False)
    rc, out, _ = run("power", "get")
    assert rc == 0 and out.startswith("mode: 5 MODE_10W_DESKTOP (from PM_CONFIG DEFAULT)")
    assert "nvpmodel -q failed" in out and "power mode is not set" in out
    rc, out, _ = run("power", "set", "8")
    assert rc == 0 and out.startswith("switched: mode 8") and tree.status() == "pmode:0008\n"


def test_nvpmodel_parse_lists_the_modes_nvpmodel_reads(jetson):
    tree = jetson("agx-orin")
    parsed = Nvpmodel().parse_conf()
    assert parsed.modes == {i: m.name for i, m in tree.profile.modes.items()} and parsed.default == 2


def test_switch_timeout_kills_a_hung_nvpmodel(jetson, monkeypatch):
    tree = jetson("xavier-nx")
    monkeypatch.setenv("FAKE_NVPMODEL_HANG", "1")
    result = Nvpmodel(switch_timeout_s=0.5).set_mode(8)
    assert result.outcome == "failed" and "timed out after 0.5 s" in result.reason
    assert result.after is not None and result.after.id == 5 and tree.status() == "pmode:0005\n"


def test_switch_without_root_fails_like_nvpmodel(jetson, monkeypatch):
    tree = jetson("xavier-nx")
    monkeypatch.setenv("FAKE_EUID", "1000")
    result = Nvpmodel().set_mode(8)
    assert result.outcome == "failed" and "Error opening /sys/devices/system/cpu/cpu0/online: 13" in result.reason
    assert tree.online() == "0-3"


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
