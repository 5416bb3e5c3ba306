"""Power sources, tried in order: INA3221 sysfs, jtop, Intel RAPL — else "unavailable" with reasons.

* INA3221 on JetPack 4 (``ina3221x`` iio driver): ``rail_name_N`` + ``in_power{N}_input`` (mW).
* INA3221 on JetPack 5/6 (``ina3221`` hwmon driver): ``inK_label``, ``inK_input`` (mV),
  ``currK_input`` (mA); no power file, so P = mV × mA / 1000. ``hwmonN`` numbering is not
  stable, so devices are found by driver and name, rails by label; ``NC`` channels are skipped.
* jtop (optional, AGPL, a root service on /run/jtop.sock) only when the service answers.
* RAPL ``energy_uj`` on x86 (CPU package only; root-only since Linux 5.10).

The total is the first of VDD_IN / POM_5V_IN / VIN; otherwise the sum of the rails, flagged,
because rails overlap on some boards and the sum is then not the module's input power.
Reads never raise: a rail that fails to read is left out of that reading.

Every reading says what its total covers (:meth:`PowerReading.energy_scope`): ``module-input``
(one input rail), ``rail-sum`` (the listed rails added up: on AGX boards a partial sum, not the
module's input), ``jtop-total`` (what jtop calls the total) or ``cpu-package`` (RAPL). Each source
also says how often its values change (``refresh_s``): the INA3221 hwmon driver's
``update_interval`` (NVIDIA's nvpower.sh sets 430 ms on Xavier/Orin: 512 samples x 3 channels),
jtop's service interval. Reading faster only repeats the same value.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edged.power.platform import read_float, read_text, under

TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "VIN")


@dataclass(frozen=True)
class Rail:
    name: str
    mw: float
    mv: float | None = None
    ma: float | None = None


@dataclass(frozen=True)
class PowerReading:
    source: str
    rails: dict[str, Rail]
    total_mw: float | None
    total_rail: str | None  # which rail is the total; None when it is a sum (or unknown)
    total_is_sum: bool = False
    scope: str = "module-input"  # "module-input", "rail-sum", "jtop-total" or "cpu-package"
    extra: dict[str, float] = field(default_factory=dict)
    refresh_s: float | None = None  # how often the source's values change, where known

    def energy_scope(self) -> dict:
        """What an energy figure from this source covers: ``{"kind", "rails", "source"}``."""
        rails = [self.total_rail] if self.total_rail and not self.total_is_sum else sorted(self.rails)
        return {"kind": self.scope, "rails": rails, "source": self.source}

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "scope": self.scope,
            "refresh_ms": None if self.refresh_s is None else round(self.refresh_s * 1000, 1),
            "total_mw": None if self.total_mw is None else round(self.total_mw, 1),
            "total_rail": self.total_rail,
            "total_is_sum": self.total_is_sum,
            "rails": {r.name: {"mw": round(r.mw, 1), "mv": r.mv, "ma": r.ma} for r in self.rails.values()},
            **self.extra,
        }


class PowerSource(Protocol):
    name: str
    refresh_s: float | None  # how often a new value appears; None when unknown

    def read(self) -> PowerReading | None: ...


def is_nc(label: str) -> bool:
    """Not-connected channels are labelled ``NC`` (AGX Orin's 1-0041 has two)."""
    return "NC" in re.split(r"[\s_\-]+", label.strip().upper())


def _with_total(source: str, rails: dict[str, Rail], refresh_s: float | None = None) -> PowerReading | None:
    if not rails:
        return None
    for name in TOTAL_RAILS:
        if name in rails:
            return PowerReading(source, rails, rails[name].mw, name, refresh_s=refresh_s)
    return PowerReading(source, rails, sum(r.mw for r in rails.values()), None, total_is_sum=True,
                        scope="rail-sum", refresh_s=refresh_s)


class Ina3221Iio:
    """JetPack 4: ``/sys/bus/i2c/drivers/ina3221x/<bus>-0040/iio:device*/``."""

    name = "ina3221-iio"
    refresh_s: float | None = None  # the JetPack 4 iio driver exposes no update interval

    def __init__(self, devices: list[Path]):
        self.devices = devices

    @classmethod
    def discover(cls, root: Path) -> Ina3221Iio | None:
        devices = sorted(p for p in under(root, "/sys/bus/i2c/drivers/ina3221x").glob("*/iio:device*") if p.is_dir())
        return cls(devices) if devices else None

    def read(self) -> PowerReading | None:
        rails: dict[str, Rail] = {}
        for dev in self.devices:
            for name_file in sorted(dev.glob("rail_name_*")):
                n = name_file.name.rsplit("_", 1)[1]
                label = (read_text(name_file) or "").strip()
                if not label or is_nc(label):
                    continue
                mw = read_float(dev / f"in_power{n}_input")
                mv, ma = read_float(dev / f"in_voltage{n}_input"), read_float(dev / f"in_current{n}_input")
                if mw is None and mv is not None and ma is not None:
                    mw = mv * ma / 1000.0
                if mw is not None:
                    rails[label] = Rail(label, mw, mv, ma)
        return _with_total(self.name, rails, self.refresh_s)


class Ina3221Hwmon:
    """JetPack 5/6: ``ina3221`` hwmon devices, found by driver directory or by ``name`` file."""

    name = "ina3221-hwmon"

    def __init__(self, hwmons: list[Path]):
        self.hwmons = hwmons
        # update_interval (ms) = channels x samples x conversion time; the slowest chip sets the pace
        intervals = [v for v in (read_float(h / "update_interval") for h in hwmons) if v is not None and v > 0]
        self.refresh_s: float | None = max(intervals) / 1000.0 if intervals else None

    @classmethod
    def discover(cls, root: Path) -> Ina3221Hwmon | None:
        found: dict[Path, Path] = {}
        candidates = list(under(root, "/sys/bus/i2c/drivers/ina3221").glob("*/hwmon/hwmon*"))
        for name_file in under(root, "/sys/bus/i2c/devices").glob("*/name"):
            if (read_text(name_file) or "").strip() == "ina3221":
                candidates += list(name_file.parent.glob("hwmon/hwmon*"))
        for hwmon in under(root, "/sys/class/hwmon").glob("hwmon*"):
            if (read_text(hwmon / "name") or "").strip() == "ina3221":
                candidates.append(hwmon)
        for path in candidates:
            if any(path.glob("in*_label")):
                found.setdefault(path.resolve(), path)
        hwmons = sorted(found.values(), key=lambda p: str(p.resolve()))
        return cls(hwmons) if hwmons else None

    def read(self) -> PowerReading | None:
        rails: dict[str, Rail] = {}
        for hwmon in self.hwmons:
            for label_file in sorted(hwmon.glob("in*_label")):
                k = label_file.name[2 : -len("_label")]
                label = (read_text(label_file) or "").strip()
                # in7 is "sum of shunt voltages" and has no current: a label needs a matching currK.
                if not label or is_nc(label) or label.lower().startswith("sum of"):
                    continue
                mv, ma = read_float(hwmon / f"in{k}_input"), read_float(hwmon / f"curr{k}_input")
                if mv is not None and ma is not None:
                    rails[label] = Rail(label, mv * ma / 1000.0, mv, ma)
        return _with_total(self.name, rails, self.refresh_s)


class JtopSource:
    """jetson-stats' service; imported only here so edged never depends on the AGPL package."""

    name = "jtop"

    def __init__(self, client: object):
        self._client = client
        # the service's own refresh period (jtop's .interval, seconds): reading faster repeats values
        interval = getattr(client, "interval", None)
        self.refresh_s: float | None = float(interval) if isinstance(interval, (int, float)) and interval > 0 else None

    @classmethod
    def discover(cls, socket_path: Path) -> tuple[JtopSource | None, str]:
        if not socket_path.exists():
            return None, f"service not running ({socket_path} absent)"
        try:
            from jtop import JtopException, jtop  # type: ignore[import-not-found]
        except ImportError:
            return None, "jetson-stats not installed (optional extra edged[jetson])"
        client = jtop()
        try:
            client.start()
        except JtopException as exc:
            return None, f"service did not answer: {exc}"
        except OSError as exc:
            return None, f"service did not answer: {exc}"
        source = cls(client)
        if source.read() is None:
            source.close()
            return None, "service answered without power data"
        return source, ""

    def read(self) -> PowerReading | None:
        try:
            power = self._client.power
        except Exception:  # jtop raises its own errors when the service goes away; never fatal here
            return None
        rails = {
            name: Rail(name, float(v["power"]), v.get("volt"), v.get("curr"))
            for name, v in (power or {}).get("rail", {}).items()
            if "power" in v and not is_nc(name)
        }
        total = (power or {}).get("tot", {}).get("power")
        if total is None:
            return _with_total(self.name, rails, self.refresh_s)
        return PowerReading(self.name, rails, float(total), "tot", scope="jtop-total", refresh_s=self.refresh_s)

    def close(self) -> None:
        try:
            self._client.close()  # type: ignore[attr-defined]
        except Exception:
            pass


class RaplSource:
    """Average package power between two reads of the ``energy_uj`` counter (it wraps at max_energy_range_uj)."""

    name = "rapl"
    refresh_s: float | None = None  # the counter runs continuously; a reading averages since the last one
    averages_between_reads = True

    def __init__(self, domain: Path, clock: Callable[[], float] = time.monotonic):
        self.domain = domain
        self.clock = clock
        self.max_range = read_float(domain / "max_energy_range_uj") or float(2**32)
        self._last: tuple[float, float] | None = None
        self._lock = threading.Lock()  # the energy meter and the telemetry sampler may share one source

    @classmethod
    def discover(cls, root: Path) -> tuple[RaplSource | None, str]:
        domain = under(root, "/sys/class/powercap/intel-rapl:0")
        energy = domain / "energy_uj"
        if not energy.exists():
            return None, f"{energy} absent (no Intel RAPL; typical on VMs and non-x86)"
        try:
            energy.read_text()
        except PermissionError:
            return None, f"{energy} not readable (root-only since Linux 5.10, CVE-2020-8694)"
        except OSError as exc:
            return None, f"{energy}: {exc.strerror}"
        return cls(domain), ""

    def read(self) -> PowerReading | None:
        with self._lock:
            now, uj = self.clock(), read_float(self.domain / "energy_uj")
            if uj is None:
                return None
            last, self._last = self._last, (now, uj)
        if last is None or now <= last[0]:
            return None
        delta = uj - last[1] if uj >= last[1] else uj + self.max_range - last[1]
        mw = delta / (now - last[0]) / 1000.0  # µJ/s = µW
        label = (read_text(self.domain / "name") or "package-0").strip()
        return PowerReading(
            self.name, {label: Rail(label, mw)}, mw, label, scope="cpu-package", extra={"energy_uj": uj}
        )


def discover_power_source(
    root: str | Path = "/", jtop_socket: str | Path | None = None
) -> tuple[PowerSource | None, dict[str, str]]:
    """The first working source, plus why each one tried before it (or all, when none) is unavailable."""
    root = Path(root)
    reasons: dict[str, str] = {}
    iio = Ina3221Iio.discover(root)
    if iio and iio.read():
        return iio, reasons
    hwmon = Ina3221Hwmon.discover(root)
    if hwmon and hwmon.read():
        return hwmon, reasons
    reasons["ina3221"] = (
        "INA3221 found but no readable rail"
        if (iio or hwmon)
        else "no INA3221 under /sys/bus/i2c/drivers/ina3221x (JetPack 4) or an ina3221 hwmon (JetPack 5/6)"
    )
    jtop_src, why = JtopSource.discover(Path(jtop_socket) if jtop_socket else under(root, "/run/jtop.sock"))
    if jtop_src:
        return jtop_src, reasons
    reasons["jtop"] = why
    rapl, why = RaplSource.discover(root)
    if rapl:
        rapl.read()  # prime the counter: power needs two reads
        return rapl, reasons
    reasons["rapl"] = why
    return None, reasons
