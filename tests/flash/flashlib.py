"""Build an arm64 Debian root, boot it with systemd-nspawn under qemu-user, read its journal.

Debian stands in for JetPack's Ubuntu userland (bookworm: glibc 2.36, Python 3.11, systemd 252
for JetPack 6; bullseye: glibc 2.31, Python 3.9, systemd 247 for JetPack 5). Emulation facts
this module works around (measured, see /work/shared/reference/image-flash.md and the README):

* qemu 7.2 shows the guest the host's x86 ``/proc/cpuinfo``, which ONNX Runtime's cpuinfo
  parser crashes on: an ARM-format cpuinfo (two Cortex-A78AE cores) is bound over it inside the
  units that load ONNX Runtime (``BindReadOnlyPaths=``; nspawn cannot bind onto /proc, and the
  units' ``ProtectProc=`` mounts a fresh procfs anyway).
* qemu-user shifts realtime signals by 2, so the container is stopped with
  ``--kill-signal=SIGRTMIN+6``, which systemd receives as SIGRTMIN+4 (poweroff).
* Namespacing and credential directives cannot be set up by a systemd running under qemu-user:
  :data:`QEMU_DROPINS` lifts exactly those, and nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

MIRROR = os.environ.get("EDGED_FLASH_MIRROR", "http://deb.debian.org/debian")
EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*")

CPUINFO = "".join(
    f"processor\t: {n}\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
    "asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
    "CPU variant\t: 0x0\nCPU part\t: 0xd42\nCPU revision\t: 1\n\n" for n in range(2))

# What a systemd running under qemu-user cannot set up, per unit. Everything else of the
# hardening stays on. The README's "verified where" table repeats this list.
_NAMESPACES = ("PrivateNetwork=no", "PrivateIPC=no")
CPUINFO_PATH = "/etc/flash-test/cpuinfo"
_CPUINFO = (f"BindReadOnlyPaths={CPUINFO_PATH}:/proc/cpuinfo",)
QEMU_DROPINS: dict[str, tuple[str, ...]] = {
    # LoadCredential= needs a private mount of the credentials directory: "Failed to set up credentials".
    "systemd-sysusers.service": ("LoadCredential=",),
    "systemd-tmpfiles-setup.service": ("LoadCredential=",),
    "systemd-tmpfiles-setup-dev.service": ("LoadCredential=",),
    "systemd-sysctl.service": ("LoadCredential=",),
    # CLONE_NEWNET/CLONE_NEWIPC set-up (loopback over netlink) fails under qemu-user.
    "edged-bootstrap.service": ("PrivateNetwork=no",),
    "edged-engines.service": _NAMESPACES + _CPUINFO,
    "edged.service": _NAMESPACES + _CPUINFO,
}


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


def build_root(suite: str, root: Path, packages: list[str], log: Path) -> None:
    """mmdebstrap: apt's parallel downloads, one dpkg run, no fsync (force-unsafe-io)."""
    cmd = ["mmdebstrap", "--arch=arm64", "--variant=minbase", f"--include={','.join(packages)}",
           "--dpkgopt=force-unsafe-io"] + [f"--dpkgopt=path-exclude={p}" for p in EXCLUDES]
    with open(log, "ab") as out:
        run(cmd + [suite, str(root), MIRROR], stdout=out, stderr=subprocess.STDOUT)
    (root / "etc/hostname").write_text("jetson\n")  # every device of an image shares it
    (root / "etc/machine-id").write_text("")  # each device generates its own at first boot
    (root / "var/log/journal").mkdir(parents=True, exist_ok=True)  # persistent: read from the host


def write_test_dropins(root: Path) -> None:
    (root / CPUINFO_PATH.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root / CPUINFO_PATH.lstrip("/")).write_text(CPUINFO)
    for unit, lines in QEMU_DROPINS.items():
        folder = root / "etc/systemd/system" / f"{unit}.d"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "90-qemu-user.conf").write_text(
            "# flash-test only: qemu-user cannot set these up (README, verified where)\n[Service]\n"
            + "\n".join(lines) + "\n")


@dataclass
class Boot:
    """One ``systemd-nspawn -b`` of the root; stop() powers it off cleanly."""

    root: Path
    log: Path
    private_network: bool
    proc: subprocess.Popen | None = None
    started: float = field(default_factory=time.monotonic)

    def start(self) -> "Boot":
        cmd = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "-b", "-D", str(self.root),
               "-M", "jetson", "--kill-signal=SIGRTMIN+6", "--console=read-only"] + (["--private-network"] if self.private_network else [])
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.started = time.monotonic()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 120) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn turns it into --kill-signal for the container
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
                raise AssertionError(f"the container did not power off within {timeout} s")
        return self.proc.returncode


class Journal:
    """The root's persistent journal, read with the host's journalctl."""

    def __init__(self, root: Path):
        self.dir = root / "var/log/journal"

    def entries(self) -> list[dict]:
        done = subprocess.run(["journalctl", "-D", str(self.dir), "-o", "json", "--no-pager", "-q"],
                              capture_output=True, text=True)
        out = []
        for line in done.stdout.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def boots(self) -> list[list[dict]]:
        order: dict[str, list[dict]] = {}
        for e in self.entries():
            order.setdefault(e.get("_BOOT_ID", "?"), []).append(e)
        return sorted(order.values(), key=lambda es: int(es[0]["__REALTIME_TIMESTAMP"]))

    def text(self, boot: int = -1) -> str:
        boots = self.boots()
        if not boots:
            return "(no journal)"
        return "\n".join(f"{e.get('SYSLOG_IDENTIFIER', '?')}[{e.get('_SYSTEMD_UNIT', e.get('UNIT', ''))}]: "
                         f"{_message(e)}" for e in boots[boot])


def _message(entry: dict) -> str:
    msg = entry.get("MESSAGE", "")
    return bytes(msg).decode("utf-8", "replace") if isinstance(msg, list) else str(msg)


def jobs(boot: list[dict]) -> dict[str, tuple[str, int]]:
    """unit -> (start job result, monotonic usec) for the boot's finished start jobs."""
    out: dict[str, tuple[str, int]] = {}
    for e in boot:
        if e.get("JOB_TYPE") == "start" and "UNIT" in e and "JOB_RESULT" in e:
            out[e["UNIT"]] = (e["JOB_RESULT"], int(e["__MONOTONIC_TIMESTAMP"]))
    return out


def unit_lines(boot: list[dict], unit: str) -> list[str]:
    return [_message(e) for e in boot if e.get("_SYSTEMD_UNIT") == unit]


def wait_for_unit(journal: Journal, boot_index: int, unit: str, box: Boot, timeout: float) -> list[dict]:
    """Wait until ``unit``'s start job of boot ``boot_index`` finished; fail on any failed job."""
    deadline = time.monotonic() + timeout
    while True:
        boots = journal.boots()
        if len(boots) > boot_index:
            boot = boots[boot_index]
            done = jobs(boot)
            failed = {u: r for u, (r, _) in done.items() if r not in ("done", "skipped")}
            if failed:
                raise AssertionError(f"units failed in boot {boot_index + 1}: {failed}\n{journal.text(boot_index)[-6000:]}")
            if unit in done:
                return boot
        if not box.alive():
            raise AssertionError(f"the container exited ({box.proc.returncode if box.proc else '?'}):\n"
                                 f"{box.log.read_text(errors='replace')[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{unit} not started after {timeout} s in boot {boot_index + 1}:\n"
                                 f"{journal.text(boot_index)[-6000:] if len(journal.boots()) > boot_index else box.log.read_text(errors='replace')[-4000:]}")
        time.sleep(2)
