"""The nvpmodel and jetson_clocks stand-ins refuse and fail where the real tools do.

Each case is a behaviour of the real tool quoted in public sources (see the stand-ins' docstrings):
if a stand-in accepted more, the edgectl tests would pass where a board fails.
"""

from __future__ import annotations

import os
import subprocess


def tool(standins, name: str, *args: str, stdin: str | None = None, euid: int | None = None):
    env = {**os.environ, **({"FAKE_EUID": str(euid)} if euid is not None else {})}
    return subprocess.run([str(standins / name), *args], input=stdin if stdin is not None else "",
                          capture_output=True, text=True, env=env, timeout=30)


def test_nvpmodel_query_fails_when_no_mode_was_recorded(jetson, standins):
    jetson("orin-nx", status=False)
    proc = tool(standins, "nvpmodel", "-q")
    assert proc.returncode == 255 and proc.stdout.strip() == "NVPM WARN: power mode is not set!"


def test_nvpmodel_query_without_root_adds_the_emc_errors_after_the_mode(jetson, standins):
    jetson("orin-nx")
    lines = tool(standins, "nvpmodel", "-q", euid=1000).stdout.splitlines()
    assert lines[:2] == ["NV Power Mode: 15W", "2"]
    assert lines[2] == "NVPM ERROR: Error opening /sys/kernel/nvpmodel_emc_cap/emc_iso_cap: 13"


def test_nvpmodel_switch_needs_root_and_fails_with_255(jetson, standins):
    tree = jetson("xavier-nx")
    proc = tool(standins, "nvpmodel", "-m", "8", euid=1000)
    assert proc.returncode == 255 and "Error opening /sys/devices/system/cpu/cpu0/online: 13" in proc.stdout
    assert proc.stdout.rstrip().endswith("NVPM ERROR: optMask is 1, no request for power mode")
    assert tool(standins, "nvpmodel", "-m", "42").returncode == 255 and tree.status() == "pmode:0005\n"


def test_nvpmodel_parse_verbose_lists_modes_and_int_max(jetson, standins):
    jetson("agx-orin")
    out = tool(standins, "nvpmodel", "-p", "--verbose").stdout
    assert "NVPM VERB: PM_CONFIG: DEFAULT=MODE_30W(2)" in out
    assert "NVPM VERB: POWER_MODEL: ID=0 NAME=MAXN" in out and "NVPM VERB: CPU_A78_0 MAX_FREQ 2147483647" in out
    assert "POWER_MODEL" not in tool(standins, "nvpmodel", "-p").stdout  # without --verbose: parse result only


def test_nvpmodel_xavier_changes_online_cpus_live(jetson, standins):
    tree = jetson("xavier-nx")  # mode 5: 4 CPUs -> mode 8: 6 CPUs, masks equal
    assert tool(standins, "nvpmodel", "-m", "8").returncode == 0 and tree.online() == "0-5"


def test_nvpmodel_orin_prompts_for_a_cpu_count_change_even_with_equal_masks(jetson, standins):
    tree = jetson("profile:jetson-orin-nano-4gb-p3767-0004")  # 10W: 6 CPUs -> 7W_AI: 4 CPUs, masks equal
    proc = tool(standins, "nvpmodel", "-m", "1")
    assert proc.returncode == 255 and "Reboot required for changing to this power mode: 1" in proc.stdout
    assert "NVPM ERROR: bad input!" in proc.stdout and tree.online() == "0-5"
    proc = tool(standins, "nvpmodel", "-m", "1", stdin="YES\n")
    assert proc.returncode == 0 and tree.status() == "pmode:0001\n" and tree.online() == "0-3"
    assert (tree.root / "run/fake-nvpmodel-rebooted").exists()


def test_nvpmodel_applies_clamped_clocks_through_knext_paths(jetson, standins):
    tree = jetson("orin-nx", current=3)  # the conf names the JetPack 5 GPU path first; the tree has the KNEXT one
    assert tree.read(tree.gpu_devfreq() + "/max_freq") == "408000000"
    assert tool(standins, "nvpmodel", "-m", "0").returncode == 0  # MAXN: -1 is INT_MAX, the kernel clamps
    assert tree.read("/sys/devices/system/cpu/cpu4/cpufreq/scaling_max_freq") == "1984000"
    assert tree.read(tree.gpu_devfreq() + "/max_freq") == "1173000000" and tree.online() == "0-7"


def test_jetson_clocks_checks_root_before_anything(jetson, standins):
    jetson("orin-nx")
    for args in (["--show"], [], ["--store", "/tmp/x"], ["--restore", "/tmp/x"]):
        proc = tool(standins, "jetson_clocks", *args, euid=1000)
        assert proc.returncode == 1 and "as a root user" in proc.stdout, args


def test_jetson_clocks_store_onto_an_existing_file_prompts(jetson, standins, tmp_path):
    jetson("orin-nx")
    store = tmp_path / "l4t_dfs.conf"
    store.write_text("old\n")
    proc = tool(standins, "jetson_clocks", "--store", str(store))  # stdin at EOF: no answer
    assert proc.returncode == 1 and "already exists. Can I overwrite it? Y/N:" in proc.stdout
    assert "Error: file" in proc.stdout and store.read_text() == "old\n"
    assert tool(standins, "jetson_clocks", "--store", str(store), stdin="Y\n").returncode == 0
    assert "scaling_min_freq:729600" in store.read_text()
    proc = tool(standins, "jetson_clocks", "--restore", str(tmp_path / "absent"))
    assert proc.returncode == 1 and "file not found" in proc.stdout


def test_jetson_clocks_pins_within_the_current_mode(jetson, standins):
    tree = jetson("orin-nx")  # mode 2: CPUs capped at 1651200 kHz, GPU at 612 MHz
    assert tool(standins, "jetson_clocks").returncode == 0
    assert tree.read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_min_freq") == "1651200"
    assert tree.read(tree.gpu_devfreq() + "/min_freq") == "612000000"
    show = tool(standins, "jetson_clocks", "--show").stdout
    assert "cpu0: Online=1 Governor=schedutil MinFreq=1651200 MaxFreq=1651200" in show and "NV Power Mode: 15W" in show
