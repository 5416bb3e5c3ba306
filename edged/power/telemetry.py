"""One telemetry sample: power rails, thermal zones, CPU/GPU load and clocks, memory, power mode.

:meth:`TelemetrySampler.sample` returns a JSON-ready dict for ``{prefix}/{node}/telemetry``.
Every section degrades to ``None`` plus an entry in ``unavailable`` saying why — an x86 VM has
no rails, no GPU devfreq and often no thermal zones, and the daemon must run there all the same.
All paths are under an injectable root (fake device trees in tests, ``edgectl --root``).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edged.power.conf import ConfError, load_conf
from edged.power.nvpmodel import read_status_file
from edged.power.platform import detect_platform, read_int, read_text, under
from edged.power.rails import PowerSource, discover_power_source

# devfreq device names of the Jetson GPUs: Nano 57000000.gpu (gm20b), Xavier 17000000.gv11b,
# Orin 17000000.ga10b (JetPack 5) or 17000000.gpu (JetPack 6).
_GPU_DEVFREQ = re.compile(r"(gpu|gv11b|ga10b|gp10b|gm20b)$")
_GPU_LOAD_FALLBACK = ("/sys/devices/gpu.0/load", "/sys/devices/platform/gpu.0/load")


def parse_cpu_list(text: str) -> list[int]:
    """Kernel CPU list syntax: ``0-3,6`` → [0, 1, 2, 3, 6]."""
    cpus: list[int] = []
    for part in (text or "").strip().split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            cpus.extend(range(int(lo), int(hi) + 1))
        elif part.strip().isdigit():
            cpus.append(int(part))
    return cpus


def read_proc_stat(root: Path) -> dict[int, tuple[int, int]]:
    """Per-CPU (busy, total) jiffies from /proc/stat; offline CPUs have no line."""
    out: dict[int, tuple[int, int]] = {}
    for line in (read_text(under(root, "/proc/stat")) or "").splitlines():
        found = re.match(r"^cpu(\d+)\s+(.*)$", line)
        if not found:
            continue
        values = [int(v) for v in found.group(2).split()]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        total = sum(values[:8])  # guest time is already inside user/nice
        out[int(found.group(1))] = (total - idle, total)
    return out


# Zones that report a fixed value, not a temperature: the PMIC die "sensor" of the Nano/TX family
# reads 100 °C forever (jetson-stats skips "PMIC" zones for the same reason).
_FIXED_ZONES = re.compile(r"pmic", re.IGNORECASE)


def read_thermal(root: Path) -> dict[str, float]:
    """Zone type → °C, real sensors only, so the hottest zone means something.

    Dropped: fixed-value zones (PMIC-Die at 100 °C), zones reading exactly 0 (a sensor that is off,
    e.g. a Wi-Fi card's zone while it is down) and -256 °C or below -40 °C (Jetsons' "invalid"),
    and anything at 200 °C or more.
    """
    zones: dict[str, float] = {}
    for zone in sorted(under(root, "/sys/class/thermal").glob("thermal_zone*"), key=lambda p: int(p.name[12:] or 0)):
        kind = (read_text(zone / "type") or zone.name).strip()
        milli = read_int(zone / "temp")
        if milli is None or milli == 0 or milli <= -40000 or milli >= 200000 or _FIXED_ZONES.search(kind):
            continue
        name = kind if kind not in zones else f"{kind}.{zone.name[12:]}"
        zones[name] = milli / 1000.0
    return zones


def read_memory(root: Path) -> dict[str, float] | None:
    info: dict[str, int] = {}
    for line in (read_text(under(root, "/proc/meminfo")) or "").splitlines():
        found = re.match(r"^(\w+):\s+(\d+)", line)
        if found:
            info[found.group(1)] = int(found.group(2))  # kB
    if "MemTotal" not in info:
        return None
    avail = info.get("MemAvailable", info.get("MemFree", 0))
    swap_used = info.get("SwapTotal", 0) - info.get("SwapFree", 0)
    return {
        "total_mb": round(info["MemTotal"] / 1024, 1),
        "available_mb": round(avail / 1024, 1),
        "used_pct": round(100.0 * (1 - avail / info["MemTotal"]), 1),
        "swap_used_mb": round(swap_used / 1024, 1),
    }


def read_gpu(root: Path) -> dict[str, float | None] | None:
    """Jetson GPU load (per-mille in ``load``) and devfreq clock; None on a host without one."""
    for dev in sorted(under(root, "/sys/class/devfreq").glob("*")):
        if not _GPU_DEVFREQ.search(dev.name):
            continue
        cur = read_int(dev / "cur_freq")
        load = read_int(dev / "device" / "load")
        if load is None:
            load = next((v for v in (read_int(under(root, p)) for p in _GPU_LOAD_FALLBACK) if v is not None), None)
        max_freq = read_int(dev / "max_freq")
        return {
            "device": dev.name,
            "load_pct": None if load is None else load / 10.0,
            "freq_mhz": None if cur is None else round(cur / 1e6, 1),
            "max_freq_mhz": None if max_freq is None else round(max_freq / 1e6, 1),
        }
    return None


def status_file_mode_provider(root: Path) -> Callable[[], dict | None]:
    """The default mode source: ``/var/lib/nvpmodel/status`` (no process, no root), named from the live conf.

    The daemon should pass its own provider instead: it learns about switches over the control socket.
    """
    conf_path = detect_platform(root).nvpmodel_conf
    names: dict[int, str] = {}
    if conf_path is not None:
        try:
            names = load_conf(conf_path).names()
        except ConfError:
            pass

    def provide() -> dict | None:
        mode_id = read_status_file(root)
        if mode_id is None:
            return None
        return {"id": mode_id, "name": names.get(mode_id), "source": "/var/lib/nvpmodel/status"}

    return provide


class TelemetrySampler:
    """Build telemetry dicts. CPU load is measured between consecutive samples (the first: since start).

    ``mode_provider`` returns ``{"id": .., "name": ..}`` for the current nvpmodel mode; the daemon
    passes its own cached value (it already knows, and ``nvpmodel -q`` is a process per call).
    Without one, the nvpmodel status file is read.
    """

    def __init__(
        self,
        root: str | Path = "/",
        *,
        power_source: PowerSource | None = None,
        power_unavailable: dict[str, str] | None = None,
        mode_provider: Callable[[], dict | None] | None = None,
        jtop_socket: str | Path | None = None,
    ):
        self.root = Path(root)
        if power_source is None and power_unavailable is None:
            power_source, power_unavailable = discover_power_source(self.root, jtop_socket)
        self.power_source = power_source
        self.power_unavailable = dict(power_unavailable or {})
        self.mode_provider = mode_provider if mode_provider is not None else status_file_mode_provider(self.root)
        self._lock = threading.Lock()
        self._last_stat = read_proc_stat(self.root)

    def _cpu(self) -> dict | None:
        now = read_proc_stat(self.root)
        with self._lock:
            last, self._last_stat = self._last_stat, now
        present = parse_cpu_list(read_text(under(self.root, "/sys/devices/system/cpu/present")) or "") or sorted(now)
        online = set(parse_cpu_list(read_text(under(self.root, "/sys/devices/system/cpu/online")) or "") or now)
        if not present:
            return None
        cores = []
        for cpu in present:
            load = None
            if cpu in now and cpu in last and now[cpu][1] > last[cpu][1]:
                busy, total = now[cpu][0] - last[cpu][0], now[cpu][1] - last[cpu][1]
                load = round(100.0 * busy / total, 1)
            khz = read_int(under(self.root, f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq"))
            cores.append(
                {
                    "id": cpu,
                    "online": cpu in online,
                    "load_pct": load,
                    "freq_mhz": None if khz is None else round(khz / 1000, 1),
                }
            )
        loads = [c["load_pct"] for c in cores if c["load_pct"] is not None]
        return {
            "online": sum(c["online"] for c in cores),
            "total": len(cores),
            "load_pct": round(sum(loads) / len(loads), 1) if loads else None,
            "cores": cores,
        }

    def sample(self) -> dict:
        """One JSON-ready sample; never raises for missing or unreadable sources."""
        unavailable: dict[str, str] = {}
        power = None
        if self.power_source is not None:
            reading = self.power_source.read()
            if reading is not None:
                power = reading.as_dict()
            else:
                unavailable["power"] = (
                    f"{self.power_source.name}: no reading this time (counter priming or a read error)"
                )
        else:
            unavailable["power"] = "; ".join(f"{k}: {v}" for k, v in self.power_unavailable.items()) or "no source"
        thermal = read_thermal(self.root)
        if not thermal:
            unavailable["thermal"] = "no readable /sys/class/thermal/thermal_zone*"
        gpu = read_gpu(self.root)
        if gpu is None:
            unavailable["gpu"] = "no Jetson GPU devfreq under /sys/class/devfreq"
        cpu = self._cpu()
        if cpu is not None and all(c["freq_mhz"] is None for c in cpu["cores"]):
            unavailable["cpu_freq"] = "no cpufreq scaling_cur_freq"
        memory = read_memory(self.root)
        if memory is None:
            unavailable["memory"] = "no /proc/meminfo"
        mode = None
        if self.mode_provider is not None:
            try:
                mode = self.mode_provider()
            except Exception as exc:  # a provider bug must not stop telemetry
                unavailable["power_mode"] = f"mode provider failed: {exc}"
        if mode is None and "power_mode" not in unavailable:
            unavailable["power_mode"] = "no nvpmodel mode on this host"
        return {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "power": power,
            "power_sources_unavailable": dict(self.power_unavailable),
            "thermal_c": thermal,
            "cpu": cpu,
            "gpu": gpu,
            "memory": memory,
            "power_mode": mode,
            "unavailable": unavailable,
        }
