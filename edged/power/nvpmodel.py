"""Driving ``nvpmodel`` and ``jetson_clocks`` — explicitly, with timeouts, and verified.

What jtop's setter gets wrong and this module does not: a switch runs ``nvpmodel -m ID`` by real
ID with stdin closed (so a reboot prompt can never be answered by accident, and never hangs on
a terminal), a timeout, and a second ``nvpmodel -q`` that proves the mode actually changed.
"Reboot required" is recognised from nvpmodel's output and reported as ``pending_reboot``;
``YES`` is written to nvpmodel only from ``on_reboot_required``, a callback the caller passes
when the technician asked for the reboot (``edgectl power set MODE --reboot``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from edged.power.platform import read_text, under

Outcome = Literal["ok", "unchanged", "pending_reboot", "rebooting", "failed", "refused"]
REBOOT_RE = re.compile(r"reboot required", re.IGNORECASE)
_QUERY_RE = re.compile(r"NV Power Mode:\s*(\S+)\s*\n\s*(\d+)")


class NvpmodelError(RuntimeError):
    """nvpmodel is missing, timed out, or printed nothing edged can read."""


@dataclass(frozen=True)
class ModeQuery:
    id: int
    name: str
    messages: tuple[str, ...] = ()  # NVPM WARN/ERROR lines printed alongside (e.g. emc_iso_cap without root)


@dataclass
class SwitchResult:
    outcome: Outcome
    requested: int
    before: ModeQuery | None = None
    after: ModeQuery | None = None
    reason: str = ""
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in ("ok", "unchanged")

    def as_dict(self) -> dict:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def parse_query(text: str) -> ModeQuery:
    """``NV Power Mode: MODE_15W`` then the ID on the next line; NVPM noise lines are kept, not fatal."""
    found = _QUERY_RE.search(text)
    if not found:
        raise NvpmodelError(f"cannot read the mode from nvpmodel -q output: {text.strip()[:300]!r}")
    messages = tuple(line.strip() for line in text.splitlines() if line.strip().startswith("NVPM "))
    return ModeQuery(id=int(found.group(2)), name=found.group(1), messages=messages)


def read_status_file(root: str | Path = "/") -> int | None:
    """The last *selected* mode from ``/var/lib/nvpmodel/status`` (``pmode:0002``); readable without root.

    It overrides PM_CONFIG DEFAULT at boot, so outside a pending reboot it is the current mode.
    """
    text = read_text(under(Path(root), "/var/lib/nvpmodel/status")) or ""
    found = re.search(r"pmode:(\d+)", text)
    return int(found.group(1)) if found else None


def _resolve(binary: str) -> str | None:
    if "/" in binary:
        return binary if os.access(binary, os.X_OK) else None
    return shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}") if os.access(p, os.X_OK)), None
    )


def _env() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C"}


class Nvpmodel:
    """One nvpmodel binary. Construction never fails; :meth:`path` is None when it is not installed."""

    def __init__(self, binary: str = "nvpmodel", *, query_timeout_s: float = 10.0, switch_timeout_s: float = 60.0):
        self.binary = binary
        self.query_timeout_s = query_timeout_s
        self.switch_timeout_s = switch_timeout_s

    @property
    def path(self) -> str | None:
        return _resolve(self.binary)

    def _run(self, args: list[str], timeout: float, stdin_text: str | None = None) -> subprocess.CompletedProcess:
        path = self.path
        if path is None:
            raise NvpmodelError(f"nvpmodel not found ({self.binary}); is this a Jetson with L4T installed?")
        try:
            return subprocess.run(
                [path, *args],
                input=stdin_text,
                stdin=None if stdin_text is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=_env(),
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            raise NvpmodelError(
                f"nvpmodel {' '.join(args)} timed out after {timeout:g} s and was killed; "
                f"output: {out.strip()[-300:]!r}"
            ) from None
        except OSError as exc:
            raise NvpmodelError(f"cannot run {path}: {exc.strerror}") from None

    def query(self) -> ModeQuery:
        proc = self._run(["-q"], self.query_timeout_s)
        return parse_query(proc.stdout + "\n" + proc.stderr)

    def set_mode(self, mode_id: int, *, on_reboot_required: Callable[[], bool] | None = None) -> SwitchResult:
        """Switch to ``mode_id`` and verify with a second query.

        When nvpmodel says a reboot is required, the first run has already been declined (stdin
        closed → "bad input", nothing changes). ``on_reboot_required`` is then asked; only if it
        returns True is ``nvpmodel -m ID`` run again with ``YES`` on stdin, which reboots the board.
        """
        try:
            before = self.query()
        except NvpmodelError as exc:
            return SwitchResult("failed", mode_id, reason=f"cannot query the current mode: {exc}")
        if before.id == mode_id:
            return SwitchResult("unchanged", mode_id, before, before, reason=f"already in mode {mode_id} {before.name}")
        try:
            proc = self._run(["-m", str(mode_id)], self.switch_timeout_s)
        except NvpmodelError as exc:
            return self._after("failed", mode_id, before, str(exc), "")
        output = (proc.stdout + proc.stderr).strip()
        if REBOOT_RE.search(output):
            if on_reboot_required is None or not on_reboot_required():
                return self._after(
                    "pending_reboot",
                    mode_id,
                    before,
                    f"mode {mode_id} needs a reboot (GPU power-gating changes); nothing was changed",
                    output,
                )
            try:
                proc = self._run(["-m", str(mode_id)], self.switch_timeout_s, stdin_text="YES\n")
            except NvpmodelError as exc:
                return self._after("failed", mode_id, before, str(exc), output)
            return SwitchResult(
                "rebooting",
                mode_id,
                before,
                None,
                f"switching to mode {mode_id}; the board reboots now",
                (proc.stdout + proc.stderr).strip(),
            )
        errors = [line.strip() for line in output.splitlines() if "ERROR" in line]
        if proc.returncode != 0 or errors:
            why = "; ".join(errors) or f"exit status {proc.returncode}"
            return self._after("failed", mode_id, before, f"nvpmodel -m {mode_id} failed: {why}", output)
        return self._after("ok", mode_id, before, "", output)

    def _after(self, outcome: Outcome, mode_id: int, before: ModeQuery, reason: str, output: str) -> SwitchResult:
        """Re-query; an "ok" that the query contradicts becomes "failed" (a silent refusal)."""
        try:
            after = self.query()
        except NvpmodelError as exc:
            return SwitchResult("failed", mode_id, before, None, f"{reason}; cannot verify: {exc}".lstrip("; "), output)
        if outcome == "ok" and after.id != mode_id:
            outcome, reason = "failed", f"nvpmodel reported success but -q still shows mode {after.id} {after.name}"
        elif outcome == "pending_reboot" and after.id != before.id:
            reason += f" (but nvpmodel -q now reports mode {after.id} {after.name})"
        return SwitchResult(outcome, mode_id, before, after, reason, output)


@dataclass(frozen=True)
class ClocksStatus:
    """``jetson_clocks --show`` read back: ``on`` when every online CPU and the GPU run pinned at max."""

    on: bool | None
    cpus: dict[str, dict[str, int]]
    gpu: dict[str, int] | None
    emc: dict[str, int] | None
    raw: str = ""

    def as_dict(self) -> dict:
        return {"on": self.on, "cpus": self.cpus, "gpu": self.gpu, "emc": self.emc}


def parse_clocks_show(text: str) -> ClocksStatus:
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
    online = [c for c in cpus.values() if c.get("Online", 1) == 1 and "MinFreq" in c]
    if not online:
        return ClocksStatus(None, cpus, gpu, emc, text)
    pinned = all(c["MinFreq"] == c.get("MaxFreq") for c in online)
    if gpu and "MinFreq" in gpu:
        pinned = pinned and gpu["MinFreq"] == gpu.get("MaxFreq")
    return ClocksStatus(pinned, cpus, gpu, emc, text)


class JetsonClocks:
    """``jetson_clocks`` on/off/status. ``on`` stores the current clocks first so ``off`` can restore them.

    An nvpmodel switch re-applies the mode's clocks, which undoes jetson_clocks: re-run ``on`` after it.
    """

    def __init__(
        self,
        binary: str = "jetson_clocks",
        store: str | Path = "/var/lib/edged/jetson_clocks.conf",
        timeout_s: float = 30.0,
    ):
        self.binary = binary
        self.store = Path(store)
        self.timeout_s = timeout_s

    def _run(self, *args: str) -> str:
        path = _resolve(self.binary)
        if path is None:
            raise NvpmodelError(f"jetson_clocks not found ({self.binary})")
        try:
            proc = subprocess.run(
                [path, *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                env=_env(),
            )
        except subprocess.TimeoutExpired:
            raise NvpmodelError(f"jetson_clocks {' '.join(args)} timed out after {self.timeout_s:g} s") from None
        if proc.returncode != 0:
            raise NvpmodelError(
                f"jetson_clocks {' '.join(args)} failed ({proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[:300]}"
            )
        return proc.stdout

    def status(self) -> ClocksStatus:
        return parse_clocks_show(self._run("--show"))

    def on(self) -> ClocksStatus:
        """Store the mode's own clocks (unless already pinned), then pin everything at max and verify."""
        if self.status().on is not True:
            self.store.parent.mkdir(parents=True, exist_ok=True)
            self._run("--store", str(self.store))
        self._run()
        status = self.status()
        if status.on is False:
            raise NvpmodelError("jetson_clocks ran but the clocks are not pinned (check --show)")
        return status

    def off(self) -> ClocksStatus:
        """Restore the stored clocks and drop the store: after a mode switch an old store would be wrong."""
        if not self.store.exists():
            raise NvpmodelError(
                f"nothing to restore: {self.store} is missing (jetson_clocks was not turned on by edged)"
            )
        self._run("--restore", str(self.store))
        self.store.unlink(missing_ok=True)
        status = self.status()
        if status.on is True:
            raise NvpmodelError("jetson_clocks --restore ran but the clocks are still pinned")
        return status
