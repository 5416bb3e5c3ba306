"""An exclusive file lock so that two processes never build the same engine at once.

``fcntl.flock`` is released by the kernel when its holder dies, so an ordinary crash leaves no
stale lock. What can leave one: a holder that forked without exec (multiprocessing's ``fork``
start method, a library spawning helpers) and then died; the forked child inherits the locked
descriptor and keeps the lock forever. The holder therefore writes its pid and process start
time into the file; a waiter that finds the lock held while that process no longer exists
breaks it by unlinking the file (new lockers use a new inode). A live holder is never broken: a
Nano build legitimately holds the lock for an hour.

Every change to *which* file is the lock happens under the breaker lock ``<name>.break``: a
breaker's judgement and unlink, a new holder's "is my descriptor still the file at the path?"
check together with writing its pid, and a release. Without that, a process that had just
``flock``-ed a stale file (its dead predecessor's pid still inside) could be judged dead by a
waiter, unlinked, and both would build. The ``.break`` file itself is re-checked the same way
(flock, then same inode as the path), so a release or ``engines prune`` may remove it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger("edged.engines")


class LockTimeout(TimeoutError):
    """Another live process held the lock for longer than we were willing to wait."""


def _start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (field 22 of /proc/pid/stat); guards against pid reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def holder_alive(info: dict) -> bool:
    if info.get("host") != socket.gethostname():
        return True  # another machine on a shared cache dir: we cannot tell, so never break it
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    started = info.get("start")
    return started is None or _start_time(int(info["pid"])) == started


def _same_file(fd: int, path: str | Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not unlinked or replaced since it was opened)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


class FileLock:
    """``with FileLock(path, timeout_s):`` — blocking exclusive lock with stale-holder recovery."""

    def __init__(self, path: str | Path, timeout_s: float = 3600.0, poll_s: float = 0.1):
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self._fd: int | None = None
        self.broke_stale = False

    def read_holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                self._wait_or_break(deadline)
                continue
            try:
                with self._breaker_lock():
                    # Under the breaker lock: a breaker either unlinked this file before (we see
                    # another inode and retry) or reads our pid after (and leaves us alone).
                    same = _same_file(fd, self.path)
                    if same:
                        pid = os.getpid()
                        info = {"pid": pid, "start": _start_time(pid), "host": socket.gethostname(),
                                "since": time.time()}
                        os.ftruncate(fd, 0)
                        os.pwrite(fd, json.dumps(info).encode(), 0)
            except BaseException:
                os.close(fd)
                raise
            if not same:  # the file was broken/unlinked after we opened it: lock the new one
                os.close(fd)
                continue
            self._fd = fd
            return

    def _wait_or_break(self, deadline: float) -> None:
        info = self.read_holder()
        if info and not holder_alive(info) and self._break_stale():
            return
        if time.monotonic() >= deadline:
            raise LockTimeout(
                f"{self.path} is held by pid {info.get('pid', '?')} on {info.get('host', '?')} since "
                f"{time.strftime('%H:%M:%S', time.localtime(info.get('since', 0)))}; gave up after {self.timeout_s:g} s"
            )
        time.sleep(self.poll_s)

    @contextmanager
    def _breaker_lock(self) -> Iterator[None]:
        """Hold ``<name>.break`` exclusively; re-open it if it was removed while we waited for it."""
        guard_path = f"{self.path}.break"
        while True:
            guard = os.open(guard_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(guard, fcntl.LOCK_EX)
                if _same_file(guard, guard_path):
                    break
            except BaseException:
                os.close(guard)
                raise
            os.close(guard)  # unlinked by a release or prune while we waited: lock the current one
        try:
            yield
        finally:
            os.close(guard)

    def _break_stale(self) -> bool:
        """Unlink the lock file if, re-checked under the breaker lock, its holder is still dead.

        Breakers serialize on ``<name>.break`` and unlink only the inode whose holder they judged,
        so a file that a live process created and locked in the meantime is never removed; a
        process that flocked the stale file claims it under the same lock, so it is either
        unlinked before the claim (the claimer retries) or seen alive.
        """
        try:
            with self._breaker_lock():
                try:
                    fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    return True  # someone else broke it already
                try:
                    inode = os.fstat(fd).st_ino
                    info = json.loads(os.pread(fd, 4096, 0) or b"{}")
                except ValueError:
                    return False
                finally:
                    os.close(fd)
                if not info or holder_alive(info) or os.stat(self.path).st_ino != inode:
                    return False
                log.warning("breaking stale lock %s held by dead process %s (a forked child kept it)", self.path,
                            info.get("pid"))
                os.unlink(self.path)
                self.broke_stale = True
                return True
        except FileNotFoundError:
            return True

    def release(self) -> None:
        """Unlink the lock file (and the breaker file) while still holding both, then unlock.

        Waiters re-open and re-check the inode, so removing the files under the locks is safe
        and leaves no per-engine litter in the cache directory.
        """
        if self._fd is None:
            return
        try:
            with self._breaker_lock():
                for path in (self.path, Path(f"{self.path}.break")):
                    try:
                        path.unlink()
                    except FileNotFoundError:
                        pass
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_lock(path: str | Path) -> FileLock | None:
    """The lock at ``path`` if no live process holds it (a stale one is broken), else None at once.

    For housekeeping such as ``engines prune``: it must skip a key whose engine is being built,
    never wait an hour for it. An empty holder record counts as held, since that is a new holder
    between its ``flock`` and writing its pid.
    """
    lock = FileLock(path, timeout_s=0.0)
    try:
        lock.acquire()
    except LockTimeout:
        return None
    return lock


def lock_held(path: str | Path) -> bool:
    """Whether a live process holds the lock at ``path``, changing nothing (for dry runs).

    Probing takes the flock for an instant; a locker that meets it then just polls again.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            try:
                info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                return True
            return not info or holder_alive(info)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
