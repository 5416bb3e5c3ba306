"""Fake Jetson roots with the real layouts, and the stand-in nvpmodel/jetson_clocks on PATH.

Each tree has what edged reads on a device: device-tree compatible/model, /etc/nv_tegra_release,
/etc/nvpmodel.conf as a symlink to /etc/nvpmodel/nvpmodel_<board>.conf (generated here from the
profile in nvpmodel.conf format), /var/lib/nvpmodel/status, INA3221 sysfs (iio on JetPack 4,
hwmon on 5/6, reached through the same driver/device/class symlinks as on a device), thermal
zones, cpufreq, GPU devfreq, /proc/stat and /proc/meminfo. Rail labels follow the reference
facts; AGX Xavier's iio rail names (GPU, CPU, SOC, CV, VDDRQ, SYS5V) come from its tegrastats.

The generated conf has the real confs' PARAM blocks (per-cluster cpufreq policy files, the GPU
devfreq files, TPC/FBP_PG_MASK under /sys/devices/gpu.0, ``*_KNEXT`` fallbacks on the JetPack 6
layout) and the tree holds those files as a booted board does: cpuN/cpufreq links to a shared
policy directory with cpuinfo limits, per-CPU ``online`` files, devfreq ``available_frequencies``,
and the INA3221 ``update_interval`` NVIDIA's nvpower.sh sets (430 ms). The stand-in tools write
these files, so a switch or jetson_clocks shows up where edged verifies it, not in a private state.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edged.control import ControlServer
from edged.power.profiles import PowerProfile, load_profiles

REPO = Path(__file__).resolve().parents[2]
PROFILE_DIR = REPO / "power_profiles"
STANDINS = Path(__file__).resolve().parent / "bin"
PROFILES = load_profiles(PROFILE_DIR)
CLUSTER = {"t210": ("CPU_A57", 4), "t194": ("CPU_DENVER_{}", 2), "t234": ("CPU_A78_{}", 4)}
RELEASE = {
    32: "# R32 (release), REVISION: 7.4, GCID: 33514132, BOARD: t210ref, EABI: aarch64",
    35: "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64",
    36: "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64",
}
# (driver, {i2c device: [(label, mV, mA)]}) — values chosen so every mW is easy to check.
RAILS = {
    "nano": ("iio", {"6-0040": [("POM_5V_IN", 5080, 700), ("POM_5V_GPU", 5072, 80), ("POM_5V_CPU", 5072, 200)]}),
    "agx-xavier": (
        "iio",
        {
            "1-0040": [("GPU", 19072, 8), ("CPU", 19072, 24), ("SOC", 19072, 57)],
            "1-0041": [("CV", 19072, 0), ("VDDRQ", 19072, 8), ("SYS5V", 4944, 287)],
        },
    ),
    "xavier-nx": ("hwmon", {"7-0040": [("VDD_IN", 5000, 900), ("VDD_CPU_GPU_CV", 5000, 250), ("VDD_SOC", 5000, 280)]}),
    "agx-orin": (
        "hwmon",
        {
            "1-0040": [("VDD_GPU_SOC", 4984, 1100), ("VDD_CPU_CV", 4984, 400), ("VIN_SYS_5V0", 4976, 600)],
            "1-0041": [("NC", 0, 0), ("VDDQ_VDD2_1V8AO", 4992, 150), ("NC", 0, 0)],
        },
    ),
    "orin-nx": ("hwmon", {"1-0040": [("VDD_IN", 5040, 1200), ("VDD_CPU_GPU_CV", 5040, 300), ("VDD_SOC", 5040, 350)]}),
}
# family -> (L4T major, GPU devfreq name, GPU device dir, load file, thermal zones)
FAMILY = {
    "nano": (
        32,
        "57000000.gpu",
        "sys/devices/57000000.gpu",
        "sys/devices/gpu.0/load",
        [("AO-therm", 38500), ("CPU-therm", 35000), ("GPU-therm", 34500), ("PMIC-Die", 100000)],
    ),
    "agx-xavier": (
        32,
        "17000000.gv11b",
        "sys/devices/17000000.gv11b",
        "sys/devices/gpu.0/load",
        [("CPU-therm", 41000), ("GPU-therm", 40500), ("Tboard_tegra", -256000)],
    ),
    "xavier-nx": (
        35,
        "17000000.gv11b",
        "sys/devices/17000000.gv11b",
        "sys/devices/gpu.0/load",
        [("CPU-therm", 44000), ("GPU-therm", 43000)],
    ),
    "agx-orin": (
        35,
        "17000000.ga10b",
        "sys/devices/17000000.ga10b",
        "sys/devices/gpu.0/load",
        [("CPU-therm", 47000), ("GPU-therm", 46000), ("tj-therm", 48500), ("iwlwifi_1", 0)],
    ),
    "orin-nx": (
        36,
        "17000000.gpu",
        "sys/devices/platform/bus@0/17000000.gpu",
        "DEVICE/load",
        [("cpu-thermal", 51000), ("gpu-thermal", 49000), ("tj-thermal", 52500)],
    ),
}
# family -> (cpuinfo_max_freq kHz, highest GPU devfreq frequency Hz) of the fake hardware
HW = {
    "nano": (1479000, 921600000),
    "agx-xavier": (2265600, 1377000000),
    "xavier-nx": (1907200, 1109250000),
    "agx-orin": (2201600, 1300500000),
    "orin-nx": (1984000, 1173000000),
}
CPU_MIN_KHZ = 729600  # the MIN_FREQ the real t234 confs write
CPU_HW_MIN_KHZ = 115200
GPU_MIN_HZ = 114750000
# Named trees used across tests: kind -> (profile module, rails/family, compatible)
TREES = {
    "nano": (
        "jetson-nano-p3448",
        "nano",
        ["nvidia,p3449-0000-b00+p3448-0002-b00", "nvidia,jetson-nano", "nvidia,tegra210"],
    ),
    "agx-xavier": ("jetson-agx-xavier-p2888", "agx-xavier", ["nvidia,p2972-0000", "nvidia,galen", "nvidia,tegra194"]),
    "xavier-nx": ("jetson-xavier-nx-p3668", "xavier-nx", ["nvidia,p3509-0000+p3668-0001", "nvidia,tegra194"]),
    "agx-orin": (
        "jetson-agx-orin-devkit-32gb-p3701-0000",
        "agx-orin",
        ["nvidia,p3737-0000+p3701-0000", "nvidia,tegra234"],
    ),
    "agx-orin-64gb": (
        "jetson-agx-orin-64gb-p3701-0005",
        "agx-orin",
        ["nvidia,p3737-0000+p3701-0005", "nvidia,tegra234"],
    ),
    "agx-xavier-industrial": (
        "jetson-agx-xavier-industrial-p2888-0008",
        "agx-xavier",
        ["nvidia,p2822-0000+p2888-0008", "nvidia,jetson-xavier-industrial", "nvidia,tegra194"],
    ),
    "orin-nx": ("jetson-orin-nx-16gb-p3767-0000", "orin-nx", ["nvidia,p3768-0000+p3767-0000", "nvidia,tegra234"]),
    "orin-nx-super": (
        "jetson-orin-nx-16gb-p3767-0000-super",
        "orin-nx",
        ["nvidia,p3768-0000+p3767-0000", "nvidia,tegra234"],
    ),
    "orin-nano": ("jetson-orin-nano-8gb-p3767-0003", "orin-nx", ["nvidia,p3768-0000+p3767-0003", "nvidia,tegra234"]),
}


def family_of(profile: PowerProfile) -> str:
    if profile.soc == "t210":
        return "nano"
    if profile.soc == "t194":
        return "xavier-nx" if profile.board == "p3668" else "agx-xavier"
    return "agx-orin" if profile.board.startswith("p3701") else "orin-nx"


def _khz(cap: object) -> str:
    return "-1" if cap == "uncapped" else str(int(round(float(cap) * 1000)))  # type: ignore[arg-type]


def _hz(cap: object) -> str:
    return "-1" if cap == "uncapped" else str(int(round(float(cap) * 1e6)))  # type: ignore[arg-type]


def clusters(profile: PowerProfile) -> list[tuple[str, list[int]]]:
    """(conf CLOCK name, cores) per cpufreq policy, as the real confs group them."""
    name, per = CLUSTER[profile.soc]
    n = profile.cpus_total
    return [(name.format(i // per), list(range(i, min(i + per, n)))) for i in range(0, n, per)]


def gpu_paths(family: str) -> tuple[str, str | None]:
    """(path of the GPU devfreq dir in the fake tree, an absent first path the conf names before it).

    The JetPack 6 layout (orin-nx family) is reached only through the conf's ``*_KNEXT`` arguments,
    as on a device whose conf still names the JetPack 5 path first.
    """
    _, gpu_name, gpu_dir, _, _ = FAMILY[family]
    real = f"/{gpu_dir}/devfreq/{gpu_name}"
    return real, ("/sys/devices/17000000.ga10b/devfreq/17000000.ga10b" if family == "orin-nx" else None)


def conf_text(profile: PowerProfile, family: str | None = None) -> str:
    """An nvpmodel.conf for ``profile`` in the real format; unstated (null) facts get no line."""
    family = family or family_of(profile)
    n = profile.cpus_total
    groups = clusters(profile)
    gpu, gpu_first = gpu_paths(family)
    out = ["# generated for edged tests from " + profile.module, "< PARAM TYPE=FILE NAME=CPU_ONLINE >"]
    out += [f"CORE_{c} /sys/devices/system/cpu/cpu{c}/online" for c in range(n)]
    out += ["", "< PARAM TYPE=FILE NAME=TPC_POWER_GATING >", "TPC_PG_MASK /sys/devices/gpu.0/tpc_pg_mask"]
    out += ["", "< PARAM TYPE=FILE NAME=FBP_POWER_GATING >", "FBP_PG_MASK /sys/devices/gpu.0/fbp_pg_mask"]
    for name, cores in groups:
        base = f"/sys/devices/system/cpu/cpu{cores[0]}/cpufreq"
        out += ["", f"< PARAM TYPE=CLOCK NAME={name} >", f"FREQ_TABLE {base}/scaling_available_frequencies",
                f"MAX_FREQ {base}/scaling_max_freq", f"MIN_FREQ {base}/scaling_min_freq"]
    first = gpu_first or gpu
    out += ["", "< PARAM TYPE=CLOCK NAME=GPU >", f"FREQ_TABLE {first}/available_frequencies",
            f"MAX_FREQ {first}/max_freq", f"MIN_FREQ {first}/min_freq"]
    if gpu_first:
        out += [f"FREQ_TABLE_KNEXT {gpu}/available_frequencies", f"MAX_FREQ_KNEXT {gpu}/max_freq",
                f"MIN_FREQ_KNEXT {gpu}/min_freq"]
    out += ["", "<PARAM TYPE=CLOCK NAME=EMC >", "MAX_FREQ /sys/kernel/nvpmodel_emc_cap/emc_iso_cap", ""]
    for mode_id, m in sorted(profile.modes.items()):
        out.append(f"< POWER_MODEL ID={mode_id} NAME={m.name} >")
        online = m.cpus_online
        if online is not None:
            out += [f"CPU_ONLINE CORE_{c} {1 if c < online else 0}" for c in range(n)]
        if m.fbp_pg_mask is not None:
            out.append(f"FBP_POWER_GATING FBP_PG_MASK {m.fbp_pg_mask}")
        if m.tpc_pg_mask is not None:
            out.append(f"TPC_POWER_GATING TPC_PG_MASK {m.tpc_pg_mask}")
        if m.cpu_max_mhz is not None:
            for name, cores in groups:
                if online is None or cores[0] < online:
                    out += [f"{name} MIN_FREQ {CPU_MIN_KHZ}", f"{name} MAX_FREQ {_khz(m.cpu_max_mhz)}"]
        if m.gpu_max_mhz is not None:
            out += ["GPU MIN_FREQ 0", f"GPU MAX_FREQ {_hz(m.gpu_max_mhz)}"]
        if m.emc_max_mhz is not None:
            out.append(f"EMC MAX_FREQ {_hz(m.emc_max_mhz)}")
        out.append("")
    out += [f"< PM_CONFIG DEFAULT={profile.default_mode} >", "< FAN_CONFIG DEFAULT=cool >", ""]
    return "\n".join(out)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


@dataclass
class Tree:
    root: Path
    kind: str
    profile: PowerProfile
    family: str
    rails: dict[str, tuple[float, float]] = field(default_factory=dict)  # label -> (mV, mA), NC excluded

    def rail_mw(self, label: str) -> float:
        mv, ma = self.rails[label]
        return mv * ma / 1000.0

    def status(self) -> str:
        """The mode nvpmodel recorded, as ``pmode:NNNN`` (the real file may add `` fmode:...``)."""
        return (self.root / "var/lib/nvpmodel/status").read_text().split()[0] + "\n"

    def read(self, path: str) -> str:
        return (self.root / path.lstrip("/")).read_text().strip()

    def online(self) -> str:
        return self.read("/sys/devices/system/cpu/online")

    def gpu_devfreq(self) -> str:
        return gpu_paths(self.family)[0]

    def nvpmodel_log(self) -> list[dict]:
        import json

        path = self.root / "var/log/fake-nvpmodel.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _apply_boot_mode(root: Path, profile: PowerProfile, family: str, mode_id: int) -> None:
    """What the board shows after booting into ``mode_id``: online CPUs, clock caps, gating masks."""
    cpu_hw, gpu_hw = HW[family]
    mode = profile.modes[mode_id]
    n = profile.cpus_total
    online = mode.cpus_online or n
    for c in range(n):
        _write(root / f"sys/devices/system/cpu/cpu{c}/online", f"{1 if c < online else 0}\n")
    _write(root / "sys/devices/system/cpu/online", (f"0-{online - 1}" if online > 1 else "0") + "\n")
    cap = cpu_hw if mode.cpu_max_mhz in (None, "uncapped") else int(round(float(mode.cpu_max_mhz) * 1000))
    for _, cores in clusters(profile):
        policy = root / f"sys/devices/system/cpu/cpufreq/policy{cores[0]}"
        _write(policy / "scaling_max_freq", f"{min(cap, cpu_hw)}\n")
        _write(policy / "scaling_min_freq", f"{CPU_MIN_KHZ}\n")
    gpu = root / gpu_paths(family)[0].lstrip("/")
    gcap = gpu_hw if mode.gpu_max_mhz in (None, "uncapped") else int(round(float(mode.gpu_max_mhz) * 1e6))
    _write(gpu / "max_freq", f"{min(gcap, gpu_hw)}\n")
    _write(gpu / "min_freq", f"{GPU_MIN_HZ}\n")
    _write(root / "sys/devices/gpu.0/tpc_pg_mask", f"{mode.tpc_pg_mask if mode.tpc_pg_mask is not None else 0}\n")
    _write(root / "sys/devices/gpu.0/fbp_pg_mask", f"{mode.fbp_pg_mask if mode.fbp_pg_mask is not None else 0}\n")


def build_tree(root: Path, kind: str, *, current: int | None = None, conf: str | None = None,
               status: bool = True) -> Tree:
    """``kind`` is a key of TREES or ``profile:<module>`` (compatible and family derived from the profile).

    ``status=False`` leaves /var/lib/nvpmodel/status absent (a board whose nvpmodel never recorded a mode).
    """
    if kind.startswith("profile:"):
        profile = PROFILES[kind.split(":", 1)[1]]
        family = family_of(profile)
        compatible = [f"nvidia,carrier-0000+{profile.match.compatible[0]}", f"nvidia,tegra{profile.soc[1:]}"]
    else:
        module, family, compatible = TREES[kind]
        profile = PROFILES[module]
    major, gpu_name, gpu_dir, load_file, zones = FAMILY[family]
    _write(root / "proc/device-tree/compatible", "\0".join(compatible) + "\0")
    _write(root / "proc/device-tree/model", f"NVIDIA {profile.title} fake\0")
    _write(root / "etc/nv_tegra_release", RELEASE[major] + "\n")
    conf_name = profile.match.nvpmodel_conf[0]
    _write(root / "etc/nvpmodel" / conf_name, conf if conf is not None else conf_text(profile, family))
    (root / "etc/nvpmodel.conf").symlink_to(f"/etc/nvpmodel/{conf_name}")
    mode = profile.default_mode if current is None else current
    if status:
        _write(root / "var/lib/nvpmodel/status", f"pmode:{mode:04d} fmode:quiet\n")
    (root / "run").mkdir(parents=True, exist_ok=True)
    tree = Tree(root=root, kind=kind, profile=profile, family=family)
    driver, devices = RAILS[family]
    for hw_index, (dev, rails) in enumerate(devices.items(), start=3):
        bus = dev.split("-")[0]
        devdir = root / f"sys/devices/platform/bus@0/3160000.i2c/i2c-{bus}/{dev}"
        _write(devdir / "name", ("ina3221x" if driver == "iio" else "ina3221") + "\n")
        if driver == "iio":
            iio = devdir / "iio:device0"
            for n, (label, mv, ma) in enumerate(rails):
                _write(iio / f"rail_name_{n}", label + "\n")
                _write(iio / f"in_voltage{n}_input", f"{mv}\n")
                _write(iio / f"in_current{n}_input", f"{ma}\n")
                _write(iio / f"in_power{n}_input", f"{int(mv * ma / 1000)}\n")
            _link(root / f"sys/bus/i2c/drivers/ina3221x/{dev}", devdir)
        else:
            hwmon = devdir / "hwmon" / f"hwmon{hw_index}"
            for k, (label, mv, ma) in enumerate(rails, start=1):
                _write(hwmon / f"in{k}_label", label + "\n")
                _write(hwmon / f"in{k}_input", f"{mv}\n")
                _write(hwmon / f"curr{k}_input", f"{ma}\n")
                _write(hwmon / f"curr{k}_max", "10000\n")
            _write(hwmon / "in7_label", "sum of shunt voltages\n")
            _write(hwmon / "in7_input", "120\n")
            _write(hwmon / "name", "ina3221\n")
            # what NVIDIA's nvpower.sh sets at boot on t194/t234: 512 samples, 430 ms per update
            _write(hwmon / "samples", "512\n")
            _write(hwmon / "update_interval", "430\n")
            _link(root / f"sys/bus/i2c/drivers/ina3221/{dev}", devdir)
            _link(root / f"sys/class/hwmon/hwmon{hw_index}", hwmon)
        _link(root / f"sys/bus/i2c/devices/{dev}", devdir)
        for label, mv, ma in rails:
            if label != "NC":
                tree.rails[label] = (mv, ma)
    for i, (zone, temp) in enumerate(zones):
        _write(root / f"sys/class/thermal/thermal_zone{i}/type", zone + "\n")
        _write(root / f"sys/class/thermal/thermal_zone{i}/temp", f"{temp}\n")
    cpu_hw, gpu_hw = HW[family]
    devfreq = root / gpu_dir / "devfreq" / gpu_name
    _write(devfreq / "cur_freq", "612000000\n")
    caps = {int(round(float(m.gpu_max_mhz) * 1e6)) for m in profile.modes.values()
            if m.gpu_max_mhz not in (None, "uncapped")}
    table = sorted({GPU_MIN_HZ, 306000000, gpu_hw} | {c for c in caps if c <= gpu_hw})
    _write(devfreq / "available_frequencies", " ".join(str(f) for f in table) + "\n")
    _link(devfreq / "device", root / gpu_dir)
    _link(root / "sys/class/devfreq" / gpu_name, devfreq)
    _write(root / "sys/devices/platform/15340000.vic/devfreq/15340000.vic/cur_freq", "115200000\n")
    _link(root / "sys/class/devfreq/15340000.vic", root / "sys/devices/platform/15340000.vic/devfreq/15340000.vic")
    _write(root / load_file.replace("DEVICE", gpu_dir), "345\n")
    _write(root / "sys/kernel/nvpmodel_emc_cap/emc_iso_cap", "0\n")
    _write(root / "sys/devices/gpu.0/power/control", "auto\n")
    n = profile.cpus_total
    _write(root / "sys/devices/system/cpu/present", f"0-{n - 1}\n")
    for _, cores in clusters(profile):
        policy = root / f"sys/devices/system/cpu/cpufreq/policy{cores[0]}"
        _write(policy / "cpuinfo_min_freq", f"{CPU_HW_MIN_KHZ}\n")
        _write(policy / "cpuinfo_max_freq", f"{cpu_hw}\n")
        _write(policy / "scaling_cur_freq", "1420800\n")
        _write(policy / "scaling_governor", "schedutil\n")
        for c in cores:
            _link(root / f"sys/devices/system/cpu/cpu{c}/cpufreq", policy)
    _apply_boot_mode(root, profile, family, mode)
    online = profile.modes[mode].cpus_online or n
    stat = ["cpu  1000 0 500 8000 100 0 0 0 0 0"] + [f"cpu{c} 100 0 50 800 10 0 0 0 0 0" for c in range(online)]
    _write(root / "proc/stat", "\n".join(stat) + "\nintr 0\n")
    _write(
        root / "proc/meminfo",
        "MemTotal:        7999999 kB\nMemFree:  1000000 kB\nMemAvailable:    4000000 kB\n"
        "SwapTotal:       4000000 kB\nSwapFree:        3000000 kB\n",
    )
    return tree


@pytest.fixture
def standins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in tools, shebang pointed at this interpreter, first on PATH."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("nvpmodel", "jetson_clocks"):
        text = (STANDINS / tool).read_text().split("\n", 1)[1]
        (bindir / tool).write_text(f"#!{sys.executable} -IS\n{text}")  # stdlib only: start fast
        (bindir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    for knob in (
        "FAKE_NVPMODEL_IGNORE",
        "FAKE_NVPMODEL_FAIL",
        "FAKE_NVPMODEL_HANG",
        "FAKE_NVPMODEL_REBOOT",
        "FAKE_EUID",
        "SUDO_USER",
    ):
        monkeypatch.delenv(knob, raising=False)
    return bindir


@pytest.fixture
def jetson(tmp_path: Path, standins: Path, monkeypatch: pytest.MonkeyPatch):
    """Factory: ``jetson("orin-nx", current=1)`` builds a fake root and points the stand-ins and edgectl at it."""

    def make(kind: str, **kw: object) -> Tree:
        root = tmp_path / "root"
        tree = build_tree(root, kind, **kw)  # type: ignore[arg-type]
        monkeypatch.setenv("FAKE_JETSON_ROOT", str(root))
        monkeypatch.setenv("EDGED_SYSROOT", str(root))
        monkeypatch.delenv("EDGED_CONFIG", raising=False)
        return tree

    return make


@pytest.fixture
def sockdir():
    """A short directory for AF_UNIX paths (108-byte limit), traversable by other users."""
    path = tempfile.mkdtemp(prefix="edged-t", dir="/tmp")
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


class FakeDaemon:
    """A real ControlServer with recording handlers, standing in for the daemon's registrations."""

    def __init__(self, path: Path):
        self.calls: list[tuple[str, dict, object]] = []
        self.server = ControlServer(
            path,
            {
                "status": lambda args, peer: self._record("status", args, peer, {"models": ["cxr"], "mode": "test"}),
                "power.changed": lambda args, peer: self._record("power.changed", args, peer, {"retuned": True}),
                "power.clocks": lambda args, peer: self._record("power.clocks", args, peer, {}),
            },
        )
        self.path = path

    def _record(self, cmd: str, args: dict, peer: object, reply: dict) -> dict:
        self.calls.append((cmd, args, peer))
        return reply

    def events(self, cmd: str = "power.changed") -> list[dict]:
        return [args for c, args, _ in self.calls if c == cmd]


@pytest.fixture
def daemon(sockdir: Path):
    fake = FakeDaemon(sockdir / "control.sock")
    fake.server.start()
    yield fake
    fake.server.stop()


@pytest.fixture
def profiles() -> dict[str, PowerProfile]:
    """The shipped profiles (loaded once at import: a broken file fails every test loudly)."""
    return PROFILES


@pytest.fixture
def build_tree_fn():
    """``build_tree(root, kind, **kw)`` for tests that need several trees."""
    return build_tree


@pytest.fixture
def make_conf():
    """``make_conf(profile) -> str``: an nvpmodel.conf generated from a profile."""
    return conf_text
