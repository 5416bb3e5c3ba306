"""Logging set-up for a daemon whose output goes to journald (or a terminal).

Under systemd, stdout/stderr are a stream to journald, which parses a ``<N>`` syslog priority
prefix on each line and adds timestamp, PID and unit itself. So under journald every line gets
a priority prefix and no timestamp; in a terminal lines get a readable timestamp and level.
Tracebacks are multi-line: each line gets the prefix, or journald would file the continuation
lines at the default priority (info) and `journalctl -p err` would show a traceback's head only.

Two filters protect the journal:

* Rate limiting: a failing MQTT broker or a peer hammering the SCP produces the same error
  thousands of times. Identical messages (same logger, level and message template, whatever
  the arguments) beyond ``burst`` per ``interval`` seconds are dropped and counted; the next
  one after the window reports "suppressed K similar messages". journald's own per-unit limit
  would otherwise drop *all* messages of the unit, including the one that explains the fault.
* PHI redaction, as defence in depth (:mod:`edged.service.redact`): bounded, linear-time, in a
  filter that runs before the handler's lock, after the rate limiter has seen the template.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from edged.service.redact import RedactingFilter, redact_phi  # noqa: F401  (redact_phi: API)

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Libraries that dump PDUs/datasets (with patient names) at DEBUG: never below INFO.
_CHATTY_PHI_LOGGERS = ("pynetdicom",)
# ... and whose INFO is per association and per image ("Received Store Request"): shown as
# DEBUG, i.e. only with log_level debug, so a busy SCP does not fill the journal.
_DEMOTED_INFO = ("pynetdicom",)


class DemoteInfo(logging.Filter):
    """INFO records of :data:`_DEMOTED_INFO` loggers become DEBUG, and pass only when the daemon's
    level is DEBUG (the logger itself must stay at INFO for them to exist at all)."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.name.split(".")[0] in _DEMOTED_INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return self.level <= logging.DEBUG
        return True


def syslog_priority(levelno: int) -> int:
    """Map a logging level to a syslog priority (2 crit, 3 err, 4 warning, 6 info, 7 debug)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def stream_is_journal(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """True when ``stream`` is the journald stream systemd connected (``$JOURNAL_STREAM``).

    Comparing device and inode, as systemd.exec(5) asks, rather than only checking that the
    variable exists: a child run as ``edged check | less`` inherits the variable but not the
    stream, and must print readable timestamps.
    """
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):
        return False


class JournalFormatter(logging.Formatter):
    """``<3>edged.batcher: message``, every line of a traceback with the same prefix."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        text = super().format(record)
        return "\n".join(prefix + line for line in text.splitlines() or [""])


class ConsoleFormatter(logging.Formatter):
    """``2025-01-31 14:02:03.123 WARNING  edged.batcher: message`` for terminals and files."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)-8s %(name)s: %(message)s",
                         datefmt="%Y-%m-%d %H:%M:%S")



class RateLimitFilter(logging.Filter):
    """Lets ``burst`` identical messages per ``interval`` seconds through, counts the rest.

    Records below ``min_level`` always pass (repeated INFO like "stored instance" is the normal
    rhythm of the daemon, not a fault). The first record of a key after its window ended passes
    with " [suppressed K similar messages in the last N s]" appended; counts still pending at
    shutdown are returned by ``pending()`` (the handler logs them when it closes).
    """

    def __init__(self, burst: int = 10, interval: float = 60.0, min_level: int = logging.WARNING,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 1024):
        super().__init__()
        if burst < 1 or interval <= 0:
            raise ValueError("burst must be >= 1 and interval > 0")
        self.burst, self.interval, self.min_level = burst, interval, min_level
        self.clock, self.max_keys = clock, max_keys
        # key -> [window start, records seen in window, records suppressed in window]
        self._windows: dict[tuple[str, int, str], list[float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(record: logging.LogRecord) -> tuple[str, int, str]:
        return (record.name, record.levelno, str(record.msg))

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level:
            return True
        now = self.clock()
        key = self.key(record)
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.interval:
                suppressed = int(window[2]) if window else 0
                if window is None and len(self._windows) >= self.max_keys:
                    self._forget_quiet(now)
                self._windows[key] = [now, 1, 0]
                if suppressed:
                    elapsed = now - window[0]
                    record.msg = f"{record.getMessage()} [suppressed {suppressed} similar " \
                                 f"messages in the last {elapsed:.0f} s]"
                    record.args = None
                return True
            window[1] += 1
            if window[1] <= self.burst:
                return True
            window[2] += 1
            return False

    def pending(self) -> list[str]:
        """Summaries for keys with suppressed records not yet reported (and forget them)."""
        with self._lock:
            out = [f'{name}: suppressed {int(w[2])} similar messages like "{msg}"'
                   for (name, _, msg), w in self._windows.items() if w[2]]
            self._windows.clear()
        return out

    def _forget_quiet(self, now: float) -> None:
        """Bound memory: drop expired windows, then (if still full) the oldest without counts."""
        for key in [k for k, w in self._windows.items() if now - w[0] >= self.interval and not w[2]]:
            del self._windows[key]
        while len(self._windows) >= self.max_keys:
            oldest = min(self._windows, key=lambda k: self._windows[k][0])
            del self._windows[oldest]


class _EdgedHandler(logging.StreamHandler):
    """Stream handler that reports pending rate-limit counts when logging shuts down."""

    def __init__(self, stream: TextIO, limiter: RateLimitFilter):
        super().__init__(stream)
        self.limiter = limiter
        self.addFilter(limiter)
        self._redactor = RedactingFilter()

    def handle(self, record: logging.LogRecord) -> bool:
        """Filters (the rate limiter keys on the message template), then redaction — both
        before the handler's lock — then emit under the lock."""
        if not self.filter(record):
            return False
        self._redactor.filter(record)
        self.acquire()
        try:
            self.emit(record)
        finally:
            self.release()
        return True

    def close(self) -> None:
        try:
            for line in self.limiter.pending():
                record = logging.LogRecord("edged.logging", logging.WARNING, __file__, 0,
                                           "%s", (line,), None)
                super().emit(record)
        finally:
            super().close()


def setup_logging(level: str, journald: bool | None = None, *, stream: TextIO | None = None,
                  burst: int = 10, interval: float = 60.0) -> logging.Handler:
    """Configure the root logger for the daemon and return the installed handler.

    ``level`` is a name from LEVELS (any case). ``journald=None`` detects a journal stream via
    ``$JOURNAL_STREAM``. Output goes to ``stream`` (default stderr, which systemd connects to
    the journal like stdout). Calling it again replaces the previous handler instead of adding
    a second one, so tests and ``edged run`` after ``edged check`` do not print lines twice.
    """
    name = level.upper()
    if name not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS).lower()}")
    stream = sys.stderr if stream is None else stream
    if journald is None:
        journald = stream_is_journal(stream)
    handler = _EdgedHandler(stream, RateLimitFilter(burst=burst, interval=interval))
    handler.addFilter(DemoteInfo(logging.getLevelName(name)))
    handler.setFormatter(JournalFormatter() if journald else ConsoleFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _EdgedHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(name)
    numeric = logging.getLevelName(name)
    for chatty in _CHATTY_PHI_LOGGERS:
        logging.getLogger(chatty).setLevel(max(numeric, logging.INFO))
    logging.captureWarnings(True)
    return handler
