"""The daemon under test: ``edged run -c FILE`` as a real process, with its own mosquitto,
under a memory cap.

Two limits: the kernel's (``RLIMIT_AS``, set in the child before exec, as ``prlimit --as``
would) so a runaway daemon can never take this shared machine with it, and an RSS watchdog
(every 50 ms) that kills the daemon the moment its resident set passes the cap and records it —
a case that makes the daemon balloon fails the run even when the kernel limit would have let
it live. Peak RSS per case comes from the kernel's high-water mark (``VmHWM``), reset before
each case through ``/proc/PID/clear_refs``, so a spike between two samples is not missed.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from edged.localbroker import LocalBroker, free_port, wait_listening
from edged.privacy import Pseudonymizer, load_or_create_site_key

REPO = Path(__file__).resolve().parents[2]
PR_SET_PDEATHSIG = 1  # prctl(2)
# Peers are told apart by their loopback source address: 127.0.0.1 sends the cases, 127.0.0.2
# is the slow host, 127.0.0.3 only proves the daemon serves (so a per-host limit on the
# hostile traffic never refuses the proof); 127.0.0.4 and up are hosts the allow-list refuses.
CASE_HOST, SLOW_HOST, ECHO_HOST = "127.0.0.1", "127.0.0.2", "127.0.0.3"
ALLOWED_HOSTS = [CASE_HOST, SLOW_HOST, ECHO_HOST]


def _kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class Target:
    def __init__(self, workdir: Path, *, rss_cap_mb: int = 1024, as_cap_mb: int = 6144, config: dict | None = None):
        self.workdir = workdir
        self.rss_cap_mb, self.as_cap_mb = rss_cap_mb, as_cap_mb
        self.state_dir = workdir / "state"
        self.log_path = workdir / "daemon.log"
        self.port = free_port()
        self.broker = LocalBroker(self._mkdir(workdir / "broker"))
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.exits: list[int] = []  # exit codes of daemon processes that ended unasked
        self.cap_kills = 0
        self.max_rss_mb = 0.0
        self._extra = config or {}
        self._watch: threading.Thread | None = None
        self._stopping = threading.Event()
        self._pseudo: Pseudonymizer | None = None

    @staticmethod
    def _mkdir(p: Path) -> Path:
        p.mkdir(parents=True, exist_ok=True)
        return p

    def config(self) -> Path:
        repo = self._mkdir(self.workdir / "engines")
        if not (repo / "chexnet-tiny" / "model.yaml").exists():
            from edged.models.synth import write_model

            write_model("tiny", repo / "chexnet-tiny")
        cfg = {
            "node_id": "fuzz-node",
            "state_dir": str(self.state_dir),
            "cache_dir": str(self.workdir / "cache"),
            "log_level": "info",
            "model_repository": str(repo),
            "dicom": {"bind": "127.0.0.1", "port": self.port, "allowed_hosts": ALLOWED_HOSTS,
                      # 5 s, not 30: pynetdicom holds a slot for the whole ACSE timeout after a
                      # peer sent a wrong first PDU and left (issue #8 item 5, measured by the
                      # slot_hold family); with 30 s the other families would mostly wait
                      "acse_timeout_s": 5, "dimse_timeout_s": 10, "network_timeout_s": 20},
            "mqtt": {"host": "127.0.0.1", "port": self.broker.port, "resend_after_s": 2},
            "models": [{"name": "chexnet-tiny"}],
            "pipeline": {"retry_backoff_s": 1, "max_attempts": 3},
            "power": {"control_socket": str(self.workdir / "control.sock")},
            "telemetry": {"interval_s": 5},
        }
        for section, values in self._extra.items():
            if isinstance(values, dict):
                cfg.setdefault(section, {}).update(values)
            else:
                cfg[section] = values
        path = self.workdir / "edged.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 90.0) -> None:
        if self.broker.proc is None:
            self.broker.start()
        cfg = self.config()
        cap = self.as_cap_mb * 1024 * 1024

        def limit() -> None:  # in the child, before exec: the kernel's cap, like prlimit --as
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
            # and SIGTERM when the fuzzer dies, however it dies: no orphan daemon on a shared machine
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(cfg)], stdout=log,
                                         stderr=log, stdin=subprocess.DEVNULL, env=env, cwd=REPO, preexec_fn=limit)
        self.starts += 1
        try:
            wait_listening(self.port, self.proc, timeout, "edged")
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}:\n{self.log_path.read_text(errors='replace')[-3000:]}") from None
        if self._watch is None:
            self._watch = threading.Thread(target=self._watchdog, name="rss-watchdog", daemon=True)
            self._watch.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_exit(self) -> int | None:
        """The exit code if the daemon died since the last call (recorded), else None."""
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            self.exits.append(code)
            self.proc = None
            return code
        return None

    def stop(self) -> int | None:
        self._stopping.set()
        code = None
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        self.broker.stop()
        return code

    # -- memory ----------------------------------------------------------------------------
    def rss_mb(self) -> float | None:
        kb = _kb(self.proc.pid, "VmRSS") if self.proc else None
        return kb / 1024 if kb else None

    def reset_peak(self) -> None:
        if self.proc is not None:
            try:
                Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
            except OSError:
                pass

    def peak_mb(self) -> float | None:
        kb = _kb(self.proc.pid, "VmHWM") if self.proc else None
        return kb / 1024 if kb else None

    def _watchdog(self) -> None:
        while not self._stopping.wait(0.05):
            proc = self.proc
            if proc is None or proc.poll() is not None:
                continue
            kb = _kb(proc.pid, "VmRSS")
            if kb is None:
                continue
            self.max_rss_mb = max(self.max_rss_mb, kb / 1024)
            if kb / 1024 > self.rss_cap_mb:
                self.cap_kills += 1
                with open(self.log_path, "a") as log:
                    log.write(f"[fuzz] RSS {kb // 1024} MB over the cap of {self.rss_cap_mb} MB: SIGKILL\n")
                proc.kill()

    # -- what the checks need --------------------------------------------------------------
    def instance_key(self, uid: str) -> str:
        """The daemon's pseudonym of a request's SOP Instance UID (its site key, its rule)."""
        if self._pseudo is None:
            self._pseudo = Pseudonymizer(load_or_create_site_key(self.state_dir / "site.key"))
        return self._pseudo.pseudonym("instance", uid)

    @property
    def incoming(self) -> Path:
        return self.state_dir / "spool" / ".incoming"
