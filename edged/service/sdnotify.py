"""The sd_notify(3) protocol without libsystemd, and a watchdog pinger that only pings on progress.

The protocol is one AF_UNIX datagram of newline-separated ``KEY=VALUE`` assignments sent to the
socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Pulling in
a binding for that would add a compiled dependency to every Jetson image for a dozen lines.

Everything here is a no-op when ``$NOTIFY_SOCKET`` is unset (running in a terminal, in tests, in
a container), so callers never branch on "am I under systemd". Send failures are logged and
reported as ``False``; they never raise into the daemon, because a notification that cannot
be delivered must not take the service down (systemd's timeouts handle the consequences).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

# systemd reads notifications into a buffer of this size and drops anything longer.
MAX_DATAGRAM = 4096
# STATUS= is shown on one line of `systemctl status`; longer text only wraps the terminal.
MAX_STATUS = 512
# A stuck service manager must not block the daemon's main thread for ever.
SEND_TIMEOUT_S = 5.0

_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _parse_address(value: str) -> str | bytes | None:
    """Map ``$NOTIFY_SOCKET`` to a ``sendto`` address; None when the form is unsupported."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        # Linux abstract namespace: a leading NUL byte instead of '@', no filesystem entry.
        return b"\0" + value[1:].encode("utf-8")
    return None


class Notifier:
    """Sends readiness, status, watchdog and timeout notifications to the service manager.

    The environment is read once at construction: systemd sets ``NOTIFY_SOCKET``,
    ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` for the main process only. With
    ``unset_environment=True`` they are removed from ``os.environ`` so that subprocesses (engine
    builders, tools) do not inherit them and send notifications that ``NotifyAccess=main``
    would reject with a log line each.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, *, unset_environment: bool = False):
        env = os.environ if environ is None else environ
        self._socket_name = env.get("NOTIFY_SOCKET") or None
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        if unset_environment and environ is None:
            for key in _ENV_KEYS:
                os.environ.pop(key, None)
        self._address = _parse_address(self._socket_name) if self._socket_name else None
        if self._socket_name and self._address is None:
            log.warning("NOTIFY_SOCKET=%s is not a path or @abstract name; notifications disabled",
                        self._socket_name)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed = False

    @property
    def enabled(self) -> bool:
        """True when notifications go somewhere (the process runs under a service manager)."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send raw ``KEY=VALUE`` assignments in one datagram; True if it was delivered."""
        if self._address is None:
            return False
        for item in assignments:
            if "=" not in item or "\n" in item:
                raise ValueError(f"not a single KEY=VALUE assignment: {item!r}")
        data = "\n".join(assignments).encode("utf-8")
        if len(data) > MAX_DATAGRAM:
            raise ValueError(f"notification of {len(data)} bytes exceeds {MAX_DATAGRAM}")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sock.settimeout(SEND_TIMEOUT_S)
                self._sock.sendto(data, self._address)
            except OSError as exc:
                # Warn once per failure streak; the watchdog thread would otherwise repeat it.
                if not self._failed:
                    log.warning("sd_notify to %s failed: %s", self._socket_name, exc)
                self._failed = True
                self._close_locked()
                return False
            if self._failed:
                log.info("sd_notify to %s works again", self._socket_name)
                self._failed = False
            return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up finished; systemd starts dependent units and arms the watchdog."""
        return self.notify("READY=1", *self._status_field(status))

    def status(self, text: str) -> bool:
        """STATUS=: one human-readable line shown by `systemctl status`."""
        return self.notify(*self._status_field(text))

    def watchdog(self) -> bool:
        """WATCHDOG=1: one keep-alive ping (use WatchdogPinger rather than calling this)."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: shutdown began, so systemd shows "deactivating" rather than a hang."""
        return self.notify("STOPPING=1", *self._status_field(status))

    def extend_timeout(self, usec: int) -> bool:
        """EXTEND_TIMEOUT_USEC=: the current start/stop timeout now ends ``usec`` from now.

        systemd only extends, never shortens, and the extension lasts until the next message:
        send it repeatedly while work (an engine build) makes progress, with ``usec`` a few
        times the interval between messages. Stop sending and the unit's timeout fires.
        """
        if isinstance(usec, bool) or not isinstance(usec, int) or usec <= 0:
            raise ValueError(f"usec must be a positive int, got {usec!r}")
        return self.notify(f"EXTEND_TIMEOUT_USEC={usec}")

    def watchdog_interval(self) -> float | None:
        """WatchdogSec= in seconds, or None when no watchdog is expected from this process.

        Mirrors sd_watchdog_enabled(3): ``WATCHDOG_USEC`` must be a positive integer and, when
        ``WATCHDOG_PID`` is set, it must be our PID (a forked child must not ping for us).
        """
        if not self._watchdog_usec:
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            log.warning("ignoring malformed WATCHDOG_USEC=%s", self._watchdog_usec)
            return None
        if usec <= 0:
            return None
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                log.warning("ignoring malformed WATCHDOG_PID=%s", self._watchdog_pid)
                return None
        return usec / 1_000_000

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @staticmethod
    def _status_field(text: str | None) -> tuple[str, ...]:
        if text is None:
            return ()
        line = " ".join(text.split())  # newlines would start a new assignment
        if len(line) > MAX_STATUS:
            line = line[: MAX_STATUS - 1] + "…"
        return (f"STATUS={line}",)


class WatchdogPinger:
    """Sends WATCHDOG=1 every ``interval`` seconds, but only while ``progress_ok()`` is True.

    A timer that pings unconditionally only proves the interpreter is alive; the hangs that
    matter on a Jetson are a TensorRT call that never returns or a dead batcher thread, while
    the rest of the process looks healthy. The daemon supplies ``progress_ok`` (False when a
    batch has been in the backend too long or the batcher died); when it turns False the pings
    stop and systemd restarts the service after WatchdogSec. When it turns True again pings
    resume, so a slow but finished batch costs nothing.

    ``progress_ok`` runs on the pinger thread: it must be cheap, must not block and must be
    thread-safe (reading a timestamp and ``Thread.is_alive()`` is the intended shape). An
    exception from it counts as "no progress". ``interval`` defaults to half of WatchdogSec,
    as sd_watchdog_enabled(3) recommends; without a watchdog ``start()`` does nothing.
    """

    def __init__(self, notifier: Notifier, progress_ok: Callable[[], bool], *,
                 interval: float | None = None, name: str = "edged-watchdog"):
        if interval is None:
            timeout = notifier.watchdog_interval()
            interval = timeout / 2 if timeout else None
        if interval is not None and interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        self.notifier = notifier
        self.progress_ok = progress_ok
        self.interval = interval
        self.name = name
        self.pings_sent = 0
        self.pings_withheld = 0
        self.healthy: bool | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        """True when the watchdog is configured and notifications can be sent."""
        return self.interval is not None and self.notifier.enabled

    def start(self) -> bool:
        """Start the thread (first check immediately); False when there is no watchdog."""
        if not self.active:
            log.debug("no systemd watchdog configured; pinger not started")
            return False
        if self._thread is not None:
            raise RuntimeError("WatchdogPinger already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return True

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop pinging (call before STOPPING=1 so a slow shutdown is not a watchdog kill)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> "WatchdogPinger":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        assert self.interval is not None
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.interval)

    def tick(self) -> bool:
        """One check-and-maybe-ping; returns whether a ping was sent. Public for tests/tools."""
        try:
            ok = bool(self.progress_ok())
        except Exception:
            if self.healthy is not False:
                log.exception("watchdog progress check raised; treating as no progress")
            ok = False
        if not ok:
            if self.healthy is not False:
                log.error("pipeline is not making progress: withholding watchdog pings "
                          "(systemd restarts edged if this lasts WatchdogSec)")
            self.healthy = False
            self.pings_withheld += 1
            return False
        if self.healthy is False:
            log.warning("pipeline progresses again: watchdog pings resumed")
        self.healthy = True
        sent = self.notifier.watchdog()
        if sent:
            self.pings_sent += 1
        return sent
