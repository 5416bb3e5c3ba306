"""``jetson_clocks``: its state read from sysfs by anyone, on/off as root, never left at a prompt.

What the real script does that shapes this module (NVIDIA's jetson_clocks, as published):

* it checks for root right after parsing its options, before any action — ``--show`` included —
  so the status is read from sysfs instead: jetson_clocks pins every online CPU's
  ``scaling_min_freq`` to its ``scaling_max_freq`` (the current nvpmodel mode's cap) and the GPU
  devfreq ``min_freq`` to ``max_freq``; "on" means exactly that, for any user;
* ``--store FILE`` onto an existing file asks ``Can I overwrite it? Y/N`` on stdin and fails on
  anything but y/Y. edged never gets there: it stores into a fresh file and renames it over the
  old one, so ``clocks on`` works after a reboot (when the old store is still there). stdin is
  closed on every run: a prompt that should not happen fails instead of hanging;
* a stored state belongs to the nvpmodel mode it was taken in (the mode's caps and online CPUs).
  The mode is recorded beside the store (``<store>.mode.json``) and ``off`` restores the store only
  in that mode; in another mode (or with no record) it re-applies the current mode with
  ``nvpmodel -m`` instead, which resets the CPU and GPU floors (as jtop does).

Around a mode switch (:func:`edged.control.power_commands.cmd_power_set`) clocks are turned off
first and on again in the new mode, as jtop does, so the new mode's caps are what gets pinned.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edged.power.nvpmodel import NvpmodelError, _env, _resolve
from edged.power.platform import read_int, read_text, under

_GPU_DEVFREQ = re.compile(r"(gpu|gv11b|ga10b|gp10b|gm20b)$")


class ClocksError(NvpmodelError):
    """jetson_clocks is missing, refused, failed, or did not change what it should have."""


@dataclass(frozen=True)
class ClocksStatus:
    """``on`` when every online CPU and the GPU run pinned at their maximum; None when unreadable."""

    on: bool | None
    cpus: dict[str, dict[str, int]]
    gpu: dict[str, int] | None
    emc: dict[str, int] | None
    source: str = "sysfs"
    raw: str = ""

    def as_dict(self) -> dict:
        return {"on": self.on, "cpus": self.cpus, "gpu": self.gpu, "emc": self.emc, "source": self.source}


def _pinned(cpus: dict[str, dict[str, int]], gpu: dict[str, int] | None) -> bool | None:
    online = [c for c in cpus.values() if c.get("Online", 1) == 1 and "MinFreq" in c and "MaxFreq" in c]
    if not online:
        return None
    pinned = all(c["MinFreq"] == c["MaxFreq"] for c in online)
    if gpu and "MinFreq" in gpu and "MaxFreq" in gpu:
        pinned = pinned and gpu["MinFreq"] == gpu["MaxFreq"]
    return pinned


def parse_clocks_show(text: str) -> ClocksStatus:
    """``jetson_clocks --show`` (root only): ``cpuN: Online=1 ... MinFreq= MaxFreq=``, ``GPU ...``, ``EMC ...``."""

    def fields(line: str) -> dict[str, int]:
        return {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", line)}

    cpus: dict[str, dict[str, int]] = {}
    gpu = emc = None
    for line in text.splitlines():
        line = line.strip()
        if re.match(r"^cpu\d+:", line):
            cpus[line.split(":", 1)[0]] = fields(line)
        elif line.startswith("GPU "):
            gpu = fields(line)
        elif line.startswith("EMC "):
            emc = fields(line)
    return ClocksStatus(_pinned(cpus, gpu), cpus, gpu, emc, "jetson_clocks --show", text)


def read_clocks(root: str | Path = "/") -> ClocksStatus:
    """The jetson_clocks state from cpufreq and devfreq files every user may read."""
    root = Path(root)
    online: list[int] = []
    for part in (read_text(under(root, "/sys/devices/system/cpu/online")) or "").strip().split(","):
        lo, _, hi = part.partition("-")
        if lo.strip().isdigit():
            online.extend(range(int(lo), int(hi or lo) + 1))
    cpus: dict[str, dict[str, int]] = {}
    for cpu in online:
        folder = under(root, f"/sys/devices/system/cpu/cpu{cpu}/cpufreq")
        files = (("MinFreq", "scaling_min_freq"), ("MaxFreq", "scaling_max_freq"), ("CurrentFreq", "scaling_cur_freq"))
        values = {k: read_int(folder / f) for k, f in files}
        if values["MinFreq"] is not None and values["MaxFreq"] is not None:
            cpus[f"cpu{cpu}"] = {"Online": 1, **{k: v for k, v in values.items() if v is not None}}
    gpu = None
    for dev in sorted(under(root, "/sys/class/devfreq").glob("*")):
        if _GPU_DEVFREQ.search(dev.name):
            files = (("MinFreq", "min_freq"), ("MaxFreq", "max_freq"), ("CurrentFreq", "cur_freq"))
            values = {k: read_int(dev / f) for k, f in files}
            gpu = {k: v for k, v in values.items() if v is not None} or None
            break
    return ClocksStatus(_pinned(cpus, gpu), cpus, gpu, None)


class JetsonClocks:
    """``jetson_clocks`` on/off/status for the board under ``root``; ``store`` is where ``on`` saves the
    mode's own clocks (a device path, already joined to ``root`` by the caller)."""

    def __init__(
        self,
        binary: str = "jetson_clocks",
        store: str | Path = "/var/lib/edged/jetson_clocks.conf",
        timeout_s: float = 30.0,
        *,
        root: str | Path = "/",
        euid: Callable[[], int] | None = None,
    ):
        self.binary = binary
        self.store = Path(store)
        self.mode_file = self.store.with_name(self.store.name + ".mode.json")
        self.timeout_s = timeout_s
        self.root = Path(root)
        self.euid = euid or (lambda: os.geteuid())

    def _run(self, *args: str) -> str:
        path = _resolve(self.binary)
        if path is None:
            raise ClocksError(f"jetson_clocks not found ({self.binary})")
        try:
            proc = subprocess.run([path, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=self.timeout_s, env=_env())
        except subprocess.TimeoutExpired:
            raise ClocksError(f"jetson_clocks {' '.join(args)} timed out after {self.timeout_s:g} s") from None
        if proc.returncode != 0:
            said = (proc.stderr or proc.stdout).strip()[:300]
            raise ClocksError(f"jetson_clocks {' '.join(args)} failed ({proc.returncode}): {said}")
        return proc.stdout

    def _need_root(self, action: str) -> None:
        if self.euid() != 0:
            raise ClocksError(f"jetson_clocks {action} needs root (jetson_clocks refuses every action otherwise)")

    def status(self) -> ClocksStatus:
        """From sysfs: works for any user (``jetson_clocks --show`` refuses without root)."""
        return read_clocks(self.root)

    def show(self) -> ClocksStatus:
        """``jetson_clocks --show`` itself (root): for cross-checking :meth:`status` on a device."""
        self._need_root("--show")
        return parse_clocks_show(self._run("--show"))

    def stored_mode(self) -> dict | None:
        """``{"id", "name"}`` of the mode the store was taken in; None without a store or a record."""
        if not self.store.exists():
            return None
        try:
            data = json.loads(self.mode_file.read_text())
            return {"id": int(data["id"]), "name": str(data.get("name", ""))}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _forget(self) -> None:
        self.store.unlink(missing_ok=True)
        self.mode_file.unlink(missing_ok=True)

    def on(self, mode: dict | None) -> tuple[ClocksStatus, str]:
        """Store the mode's own clocks (unless already pinned), pin everything at max, verify."""
        self._need_root("on")
        how = "pinned"
        if self.status().on is not True:
            self.store.parent.mkdir(parents=True, exist_ok=True)
            fresh = self.store.with_name(f".{self.store.name}.{os.getpid()}.new")
            fresh.unlink(missing_ok=True)  # --store onto an existing file would ask "overwrite? Y/N"
            self._run("--store", str(fresh))
            os.replace(fresh, self.store)
            record = self.mode_file.with_name(self.mode_file.name + ".new")
            record.write_text(json.dumps({"id": mode["id"], "name": mode.get("name")} if mode else {}))
            os.replace(record, self.mode_file)
            how = f"stored the clocks of mode {_label(mode)}, then pinned"
        elif self.stored_mode() is None:
            how = "already pinned (no stored state: off will re-apply the mode)"
        self._run()
        status = self.status()
        if status.on is False:
            raise ClocksError("jetson_clocks ran but the clocks are not pinned")
        return status, how

    def off(self, mode: dict | None, reapply: Callable[[int], tuple[bool, str]] | None = None, *,
            switching: bool = False) -> tuple[ClocksStatus, str]:
        """Unpin: restore the store taken in this same ``mode``; otherwise re-apply ``mode`` with
        ``reapply`` (``nvpmodel -m``), or — before a switch (``switching``) — leave it to the switch."""
        self._need_root("off")
        stored = self.stored_mode()
        if stored is not None and mode is not None and stored["id"] == mode["id"]:
            self._run("--restore", str(self.store))
            how = f"restored the clocks stored in mode {_label(stored)}"
        else:
            why = (f"the stored clocks are from mode {_label(stored)}" if stored else
                   "no stored clocks" if not self.store.exists() else "the stored clocks' mode is not recorded")
            if switching:
                how = f"{why}; not restored, the switch resets the clocks"
            elif reapply is not None and mode is not None:
                ok, output = reapply(mode["id"])
                if not ok:
                    raise ClocksError(f"{why}, and re-applying mode {_label(mode)} failed: {output[:300]}")
                how = f"{why}; re-applied mode {_label(mode)} instead"
            else:
                raise ClocksError(f"nothing to restore: {why} (the current mode is {_label(mode)})")
        self._forget()
        status = self.status()
        if status.on is True and not switching:
            raise ClocksError("jetson_clocks was turned off but the clocks are still pinned")
        return status, how


def _label(mode: dict | None) -> str:
    return f"{mode['id']} {mode.get('name') or ''}".strip() if mode else "unknown"
