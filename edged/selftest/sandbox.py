"""The TensorRT checks again, as the service user inside the unit's real systemd sandbox.

A board can pass ``edged selftest`` as root and still fail as a service: the unit runs as
``edged`` with an empty capability set, a closed device policy listing only the GPU/DLA nodes,
``ProtectSystem=strict`` and a syscall filter, any of which can hide the GPU from CUDA. So the
self-test starts itself again in a transient unit::

    systemd-run --uid=edged --gid=edged --pipe --wait --collect -p <the unit's sandbox settings> \\
        -- <python> -m edged selftest --only tensorrt --no-sandbox --json <cache dir>/... [-c FILE]

and reports the rows it wrote under the group ``sandbox``. The settings come from the installed
unit and its drop-ins (the repository's copy when none is installed). Left out, and listed in
the row: what a transient unit cannot take or does not need (``Type=``, ``ExecStart=``, restart
and timeout policy, ``WatchdogSec=``), and ``RuntimeDirectory=``, which systemd removes when the
transient unit stops, taking the running daemon's control socket with it. A systemd too old for
a setting (Ubuntu 18.04 ships 237) refuses it; it is dropped and listed, as the unit itself
would ignore it with a warning.

SKIP, with the reason, when: not root (``systemd-run --uid`` needs it), PID 1 is not systemd,
the service user does not exist, or this is already the sandboxed run.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

from edged.selftest.report import Row

UNIT = "edged.service"
REPO_UNIT = Path(__file__).resolve().parents[2] / "systemd" / UNIT
SANDBOXED_ENV = "EDGED_SELFTEST_SANDBOXED"
KEEP = {
    "User", "Group", "SupplementaryGroups", "UMask", "Environment", "NoNewPrivileges", "CapabilityBoundingSet",
    "AmbientCapabilities", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "DevicePolicy",
    "DeviceAllow", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
    "ProtectClock", "ProtectHostname", "ProtectProc", "ProcSubset", "LockPersonality", "RestrictRealtime",
    "RestrictSUIDSGID", "RestrictNamespaces", "RemoveIPC", "PrivateIPC", "KeyringMode", "PrivateMounts",
    "PrivateUsers", "PrivateNetwork", "MemoryDenyWriteExecute", "RestrictAddressFamilies",
    "SystemCallArchitectures", "SystemCallFilter", "SystemCallErrorNumber", "ReadWritePaths", "ReadOnlyPaths",
    "InaccessiblePaths", "StateDirectory", "StateDirectoryMode", "CacheDirectory", "CacheDirectoryMode",
    "LogsDirectory", "LogsDirectoryMode", "ConfigurationDirectory", "LimitMEMLOCK", "LimitNOFILE", "MemoryMax",
}
SPECIFIERS = {"%C": "/var/cache", "%S": "/var/lib", "%L": "/var/log", "%t": "/run", "%E": "/etc", "%%": "%"}


def unit_files() -> list[Path]:
    """The installed unit and its drop-ins, in the order systemd applies them; else the repo's copy."""
    try:
        out = subprocess.run(["systemctl", "show", "-p", "FragmentPath", "-p", "DropInPaths", UNIT],
                             capture_output=True, text=True, timeout=10).stdout
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        files = [Path(props["FragmentPath"])] if props.get("FragmentPath") else []
        files += [Path(p) for p in props.get("DropInPaths", "").split() if p]
        if files and files[0].exists():
            return files
    except (OSError, subprocess.SubprocessError):
        pass
    return [REPO_UNIT]


def service_settings(files: list[Path]) -> list[tuple[str, str]]:
    """Every ``[Service]`` assignment of ``files`` in order (continuation lines joined, comments dropped)."""
    out: list[tuple[str, str]] = []
    for path in files:
        section, pending = None, ""
        for raw in Path(path).read_text().splitlines():
            line = pending + raw.strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line.strip("[]")
            elif section == "Service" and "=" in line:
                key, value = line.split("=", 1)
                out.append((key.strip(), value.strip()))
    return out


def _expand(value: str) -> str:
    return re.sub(r"%[CSLtE%]", lambda m: SPECIFIERS[m.group(0)], value)


def plan(settings: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[str]]:
    """(properties for ``systemd-run -p``, keys left out)."""
    keep, left = [], []
    for key, value in settings:
        if key in KEEP:
            keep.append((key, _expand(value)))
        elif key not in left:
            left.append(key)
    return keep, left


def skip_reason(user: str) -> str | None:
    if os.environ.get(SANDBOXED_ENV):
        return "this is the sandboxed run"
    if os.geteuid() != 0:
        return f"needs root to start a transient unit as {user} (run edged selftest with sudo)"
    if not Path("/run/systemd/system").is_dir():
        return "PID 1 is not systemd here (container or chroot): no unit sandbox to test"
    try:
        pwd.getpwnam(user)
    except KeyError:
        return f"the service user {user!r} does not exist (edged install creates it)"
    return None


def command(props: list[tuple[str, str]], user: str, child_args: list[str]) -> list[str]:
    cmd = ["systemd-run", "--quiet", "--pipe", "--wait", "--collect", f"--uid={user}", f"--gid={user}",
           f"--setenv={SANDBOXED_ENV}=1", "--unit", "edged-selftest-sandbox"]
    for key, value in props:
        if key not in ("User", "Group"):
            cmd += ["-p", f"{key}={value}"]
    return cmd + ["--", sys.executable, "-m", "edged", "selftest"] + child_args


def run_sandboxed(user: str, child_args: list[str], timeout_s: float) -> list[Row]:
    why = skip_reason(user)
    if why:
        return [Row("sandbox", "tensorrt as the service user", "SKIP", why)]
    props, left = plan(service_settings(unit_files()))
    cache_name = next((v.split()[0] for k, v in props if k == "CacheDirectory" and v), "edged")
    report = Path("/var/cache") / cache_name / "selftest-sandbox.json"
    report.unlink(missing_ok=True)
    args = ["--only", "tensorrt", "--no-sandbox", "--json", str(report), *child_args]
    dropped: list[str] = []
    for _ in range(len(props) + 1):
        cmd = command(props, user, args)
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s)
        unknown = re.search(r"Unknown assignment:? ([A-Za-z]+)=|Unknown (?:property|setting) ([A-Za-z]+)", proc.stderr)
        if proc.returncode == 0 or not unknown:
            break
        key = unknown.group(1) or unknown.group(2)
        dropped.append(key)
        props = [(k, v) for k, v in props if k != key]
    data = {"command": cmd, "left_out": left, "unsupported_by_this_systemd": dropped, "exit_status": proc.returncode,
            "stderr_tail": proc.stderr.strip().splitlines()[-10:]}
    if not report.exists():
        return [Row("sandbox", "tensorrt as the service user", "FAIL",
                    f"the sandboxed self-test wrote no report (exit {proc.returncode}): "
                    + " | ".join(data["stderr_tail"][-3:]), data)]
    child = json.loads(report.read_text())
    rows = [Row("sandbox", f"as {user}: {r['target']}", r["status"], r.get("note", ""), r.get("data") or {})
            for r in child.get("rows", [])]
    status = "FAIL" if any(r.status == "FAIL" for r in rows) else "PASS"
    rows.insert(0, Row("sandbox", "tensorrt as the service user", status,
                       f"{len(rows)} checks ran as {user} under {UNIT}'s sandbox ({len(props)} settings"
                       + (f"; this systemd lacks {', '.join(dropped)}" if dropped else "") + ")", data))
    return rows
