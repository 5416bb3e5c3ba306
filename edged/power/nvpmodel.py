"""Driving ``nvpmodel`` — explicitly, with timeouts, and verified on the board.

What jtop's setter gets wrong and this module does not: a switch runs ``nvpmodel -m ID`` by real
ID with stdin closed (so a reboot prompt can never be answered by accident, and never hangs on
a terminal), a timeout, and a verification of what the mode sets — online CPUs, CPU and GPU
clock caps, power-gating masks (:mod:`edged.power.verify`) — because ``nvpmodel -q`` reports
only nvpmodel's own status file, which names the new mode even when nothing was applied.
"Reboot required" is recognised from nvpmodel's output and reported as ``pending_reboot``;
``YES`` is written to nvpmodel only from ``on_reboot_required``, a callback the caller passes
when the technician asked for the reboot (``edgectl power set MODE --reboot``).

The real tool exits 255 on failure, prints ``NVPM WARN: power mode is not set!`` for ``-q``
when it never recorded a mode, and adds ``NVPM ERROR`` lines without root: a query that names
no mode is an :class:`NvpmodelError` whatever the exit status.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edged.power.platform import read_text, under

if TYPE_CHECKING:
    from edged.power.verify import ModeVerifier, Verification

Outcome = Literal["ok", "unchanged", "pending_reboot", "rebooting", "failed", "refused"]
REBOOT_RE = re.compile(r"reboot required", re.IGNORECASE)
_QUERY_RE = re.compile(r"NV Power Mode:\s*(\S+)\s*\n\s*(\d+)")
_PARSE_MODE_RE = re.compile(r"POWER_MODEL:\s*ID=(\d+)\s+NAME=(\S+)")
_PARSE_DEFAULT_RE = re.compile(r"PM_CONFIG:\s*DEFAULT=(\S+)\((\d+)\)")


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
    reboot_prompted: bool = False  # nvpmodel asked "DO YOU WANT TO REBOOT NOW?"
    verification: Verification | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in ("ok", "unchanged")

    def as_dict(self) -> dict:
        out = asdict(self)
        out["ok"] = self.ok
        out["verification"] = self.verification.as_dict() if self.verification else None
        return out


@dataclass(frozen=True)
class ParsedConf:
    """``nvpmodel -p --verbose``: the (ID, name) pairs and default nvpmodel itself reads from its conf."""

    modes: dict[int, str]
    default: int | None
    output: str = ""


def parse_query(text: str) -> ModeQuery:
    """``NV Power Mode: MODE_15W`` then the ID on the next line; NVPM noise lines are kept, not fatal."""
    found = _QUERY_RE.search(text)
    if not found:
        raise NvpmodelError(f"cannot read the mode from nvpmodel -q output: {text.strip()[:300]!r}")
    messages = tuple(line.strip() for line in text.splitlines() if line.strip().startswith("NVPM "))
    return ModeQuery(id=int(found.group(2)), name=found.group(1), messages=messages)


def parse_verbose(text: str) -> ParsedConf:
    """``NVPM VERB: POWER_MODEL: ID=2 NAME=MODE_30W`` lines and ``PM_CONFIG: DEFAULT=MODE_30W(2)``."""
    modes = {int(i): name for i, name in _PARSE_MODE_RE.findall(text)}
    if not modes:
        raise NvpmodelError(f"no POWER_MODEL lines in nvpmodel -p --verbose output: {text.strip()[:300]!r}")
    default = _PARSE_DEFAULT_RE.search(text)
    return ParsedConf(modes, int(default.group(2)) if default else None, text)


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

    def _run(self, args: list[str], timeout: float, stdin_text: str | None = None,
             user: str | None = None) -> subprocess.CompletedProcess:
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
                **({"user": user} if user is not None else {}),
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            raise NvpmodelError(
                f"nvpmodel {' '.join(args)} timed out after {timeout:g} s and was killed; "
                f"output: {out.strip()[-300:]!r}"
            ) from None
        except OSError as exc:
            raise NvpmodelError(f"cannot run {path}: {exc.strerror}") from None

    def query(self, user: str | None = None) -> ModeQuery:
        """``nvpmodel -q``; ``user`` runs it as another user (the caller must be root)."""
        proc = self._run(["-q"], self.query_timeout_s, user=user)
        return parse_query(proc.stdout + "\n" + proc.stderr)

    def parse_conf(self) -> ParsedConf:
        """``nvpmodel -p --verbose``: what nvpmodel itself makes of its conf (any user may run it)."""
        proc = self._run(["-p", "--verbose"], self.query_timeout_s)
        return parse_verbose(proc.stdout + "\n" + proc.stderr)

    def apply(self, mode_id: int) -> tuple[bool, str]:
        """``nvpmodel -m ID`` once, stdin closed: (succeeded without a prompt, output). Used to
        re-apply the current mode's clocks; a reboot prompt is declined, never answered."""
        try:
            proc = self._run(["-m", str(mode_id)], self.switch_timeout_s)
        except NvpmodelError as exc:
            return False, str(exc)
        output = (proc.stdout + proc.stderr).strip()
        return proc.returncode == 0 and not REBOOT_RE.search(output) and "ERROR" not in output, output

    def set_mode(
        self,
        mode_id: int,
        *,
        on_reboot_required: Callable[[], bool] | None = None,
        verifier: ModeVerifier | None = None,
    ) -> SwitchResult:
        """Switch to ``mode_id`` and verify it on the board (``verifier``; else a second query).

        When nvpmodel says a reboot is required, the first run has already been declined (stdin
        closed → "bad input", nothing changes). ``on_reboot_required`` is then asked; only if it
        returns True is ``nvpmodel -m ID`` run again with ``YES`` on stdin, which reboots the board.
        A failing first query (``power mode is not set!`` on a board whose nvpmodel never recorded
        a mode) does not stop the switch: setting a mode is how that is fixed.
        """
        before: ModeQuery | None
        try:
            before = self.query()
        except NvpmodelError:
            before = None
        if before is not None and before.id == mode_id:
            return SwitchResult("unchanged", mode_id, before, before, reason=f"already in mode {mode_id} {before.name}")
        snapshot = verifier.snapshot() if verifier is not None else None
        try:
            proc = self._run(["-m", str(mode_id)], self.switch_timeout_s)
        except NvpmodelError as exc:
            return self._after("failed", mode_id, before, str(exc), "")
        output = (proc.stdout + proc.stderr).strip()
        if REBOOT_RE.search(output):
            if on_reboot_required is None or not on_reboot_required():
                why = f"nvpmodel says mode {mode_id} needs a reboot; nothing was changed"
                result = self._after("pending_reboot", mode_id, before, why, output)
                result.reboot_prompted = True
                return result
            try:
                proc = self._run(["-m", str(mode_id)], self.switch_timeout_s, stdin_text="YES\n")
            except NvpmodelError as exc:
                result = self._after("failed", mode_id, before, str(exc), output)
                result.reboot_prompted = True
                return result
            return SwitchResult(
                "rebooting",
                mode_id,
                before,
                None,
                f"switching to mode {mode_id}; the board reboots now",
                (proc.stdout + proc.stderr).strip(),
                reboot_prompted=True,
            )
        errors = [line.strip() for line in output.splitlines() if "ERROR" in line]
        if proc.returncode != 0 or errors:
            why = "; ".join(errors) or f"exit status {proc.returncode}"
            return self._after("failed", mode_id, before, f"nvpmodel -m {mode_id} failed: {why}", output)
        result = self._after("ok", mode_id, before, "", output, trust_query=verifier is None)
        if verifier is not None and result.outcome == "ok":
            result.verification = check = verifier.verify(mode_id, snapshot)
            if not check.ok:
                result.outcome = "failed"
                result.reason = (f"nvpmodel reported success but the board does not run mode {mode_id}: "
                                 f"{check.summary()}")
            elif not check.verified:
                result.reason = f"not verified: {check.summary()}" + (
                    f"; nvpmodel -q reports mode {result.after.id}" if result.after else "")
        return result

    def _after(self, outcome: Outcome, mode_id: int, before: ModeQuery | None, reason: str, output: str,
               trust_query: bool = True) -> SwitchResult:
        """Re-query for the record. Only without a verifier does the query decide an "ok" (weak:
        it reports nvpmodel's status file); with one the board itself is checked after this."""
        try:
            after = self.query()
        except NvpmodelError as exc:
            if outcome == "ok" and not trust_query:
                return SwitchResult(outcome, mode_id, before, None, "", output)
            return SwitchResult("failed", mode_id, before, None, f"{reason}; cannot verify: {exc}".lstrip("; "), output)
        if outcome == "ok" and trust_query and after.id != mode_id:
            outcome, reason = "failed", f"nvpmodel reported success but -q still shows mode {after.id} {after.name}"
        elif outcome == "pending_reboot" and before is not None and after.id != before.id:
            reason += f" (but nvpmodel -q now reports mode {after.id} {after.name})"
        return SwitchResult(outcome, mode_id, before, after, reason, output)
