"""Did a power mode take effect? Read back what the mode sets, from the files nvpmodel writes.

``nvpmodel -q`` only reports nvpmodel's own record (/var/lib/nvpmodel/status): it names the
new mode even when nothing was applied. A switch is therefore verified on the board itself,
using the live conf's PARAM paths (the ``*_KNEXT`` path where the first one is absent, as
nvpmodel does):

* the online CPU set (``CPU_ONLINE CORE_k 0|1``) against /sys/devices/system/cpu/online — exact;
* each CPU cluster's ``scaling_max_freq`` and the GPU devfreq ``max_freq`` against the mode's
  ``MAX_FREQ`` (-1 = the hardware maximum: ``cpuinfo_max_freq``, the top of
  ``available_frequencies``). A clock above the cap fails; a clock that should have moved and
  did not (same value as before the switch) fails; a clock below its cap only gets a note,
  because thermal management and other caps may lower it legitimately;
* the GPU power-gating masks, where the file is readable — exact.

A file that cannot be read (an inactive cpufreq policy answers EBUSY, some need root) is
"unverified", never a failure; :attr:`Verification.verified` says whether anything was checked.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edged.power.conf import CPU_CLOCK_PARAM, NvpConf
from edged.power.platform import read_text, under

_CORE_FILE = re.compile(r"/cpu(\d+)/online$")
TOLERANCE = 0.01  # clocks within 1 % of the expected value count as equal
ONLINE = "/sys/devices/system/cpu/online"


@dataclass(frozen=True)
class Check:
    what: str
    expected: str
    actual: str | None
    ok: bool | None  # None: not readable here, so not verified
    path: str | None = None
    note: str = ""


@dataclass
class Verification:
    mode_id: int
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    @property
    def verified(self) -> bool:
        return any(c.ok is True for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]

    def summary(self) -> str:
        bad = self.failures()
        if bad:
            return "; ".join(f"{c.what} is {c.actual}, mode {self.mode_id} sets {c.expected}" for c in bad)
        if not self.verified:
            return "nothing the mode sets was readable on this board"
        notes = [f"{c.what}: {c.note}" for c in self.checks if c.note]
        return "verified on the board" + (f" ({'; '.join(notes)})" if notes else "")

    def as_dict(self) -> dict:
        return {"mode_id": self.mode_id, "ok": self.ok, "verified": self.verified,
                "checks": [asdict(c) for c in self.checks]}


def parse_cpu_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in (text or "").strip().split(","):
        lo, _, hi = part.partition("-")
        if lo.strip().isdigit():
            cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def _int(text: str | None) -> int | None:
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


class ModeVerifier:
    """Verifies modes of one conf on the board under ``root``."""

    def __init__(self, conf: NvpConf, root: str | Path = "/"):
        self.conf = conf
        self.root = Path(root)

    def _read(self, path: str) -> str | None:
        text = read_text(under(self.root, path))
        return None if text is None else text.strip()

    def _path(self, param: str, arg: str) -> str | None:
        """The file nvpmodel writes for ``PARAM ARG``: the first of ARG, ARG_KNEXT that exists."""
        paths = self.conf.paths(param, arg)
        return next((p for p in paths if under(self.root, p).exists()), paths[0] if paths else None)

    def snapshot(self) -> dict[str, str | None]:
        """Every clock and mask file any mode of the conf writes, as it reads now (taken before a switch)."""
        out: dict[str, str | None] = {ONLINE: self._read(ONLINE)}
        for mode in self.conf.modes.values():
            for param, arg, _ in mode.settings:
                if arg in ("MAX_FREQ", "TPC_PG_MASK", "FBP_PG_MASK"):
                    path = self._path(param, arg)
                    if path and path not in out:
                        out[path] = self._read(path)
        return out

    def verify(self, mode_id: int, before: dict[str, str | None] | None = None) -> Verification:
        mode = self.conf.modes[mode_id]
        result = Verification(mode_id)
        result.checks.append(self._online(mode.settings))
        for param, arg, value in mode.settings:
            if arg == "MAX_FREQ" and (CPU_CLOCK_PARAM.match(param) or param == "GPU"):
                result.checks.append(self._clock(param, value, (before or {})))
            elif arg in ("TPC_PG_MASK", "FBP_PG_MASK"):
                path = self._path(param, arg)
                actual = self._read(path) if path else None
                ok = None if actual is None else _int(actual) == _int(value)
                result.checks.append(Check(arg, value, actual, ok, path))
        return result

    def _online(self, settings: tuple[tuple[str, str, str], ...]) -> Check:
        want_on: set[int] = set()
        want_off: set[int] = set()
        for param, arg, value in settings:
            if param != "CPU_ONLINE":
                continue
            found = _CORE_FILE.search(self._path(param, arg) or "")
            core = int(found.group(1)) if found else int(arg.rsplit("_", 1)[-1])
            (want_on if value.strip() == "1" else want_off).add(core)
        if not want_on and not want_off:
            return Check("online CPUs", "unchanged", None, None, ONLINE, "the mode does not set CPUs")
        text = self._read(ONLINE)
        expected = _cpu_text(want_on) + (f" (offline {_cpu_text(want_off)})" if want_off else "")
        if text is None:
            return Check("online CPUs", expected, None, None, ONLINE)
        actual = parse_cpu_list(text)
        return Check("online CPUs", expected, text, want_on <= actual and not (want_off & actual), ONLINE)

    def _clock(self, param: str, value: str, before: dict[str, str | None]) -> Check:
        what = f"{param} max" if param != "GPU" else "GPU max_freq"
        path = self._path(param, "MAX_FREQ")
        actual = _int(self._read(path)) if path else None
        if path is None or actual is None:
            return Check(what, value, None, None, path, "not readable")
        cap = _int(value)
        folder = path.rsplit("/", 1)[0]
        if param == "GPU":
            table = sorted(int(f) for f in (self._read(f"{folder}/available_frequencies") or "").split() if f.isdigit())
            if cap is not None and cap > 0 and table:
                below = [f for f in table if f <= cap]
                cap = max(below) if below else min(table)  # devfreq settles on the highest OPP not above the cap
            hardware = table[-1] if table else None
        else:
            hardware = _int(self._read(f"{folder}/cpuinfo_max_freq"))
        uncapped = cap is None or cap <= 0 or cap >= 2**31 - 1
        expected_value = hardware if uncapped else cap
        expected = str(cap)
        if uncapped:
            expected = "hardware maximum" + (f" ({expected_value})" if hardware else "")
        if expected_value is None:
            return Check(what, expected, str(actual), None, path, "hardware maximum unknown")
        if actual > expected_value * (1 + TOLERANCE):
            return Check(what, expected, str(actual), False, path, "above the mode's cap")
        previous = _int(before.get(path))
        if previous is not None and abs(previous - expected_value) > expected_value * TOLERANCE and actual == previous:
            return Check(what, expected, str(actual), False, path, "unchanged by the switch")
        note = "below the mode's maximum (thermal or another cap)" if actual < expected_value * (1 - TOLERANCE) else ""
        return Check(what, expected, str(actual), True, path, note)


def _cpu_text(cpus: set[int]) -> str:
    ordered, out, i = sorted(cpus), [], 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out) or "none"
