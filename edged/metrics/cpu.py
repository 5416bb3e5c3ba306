"""The daemon's CPU time by what it is spent on: receiving DICOM, inference, results, decoding.

``process_cpu_seconds_total`` says how busy the daemon is, not where: on a Nano, whose
Cortex-A57 cores are the ceiling once inference runs on the GPU, an operator (and
``tools/bench_ingest.py``, issue #14) needs to tell the receive path from the pipeline behind it.
:class:`CpuByRole` reads it from the kernel, with no work on the data path:

* **live threads** are read from ``/proc/self/task/<tid>/stat`` (user + system time, what the
  kernel charged the thread) at each :meth:`CpuByRole.snapshot`, and given a role by the
  thread's ``cpu_role`` attribute if it has one (pynetdicom's association and DUL threads, whose
  names pynetdicom itself looks for), else by its name (:data:`ROLES`; edged names its
  threads). ``/proc`` is read rather than each thread's CPU clock because the clock of a thread
  that has just exited is undefined behaviour in glibc, and a file that is gone is merely an
  error;
* **threads that end** keep what they spent: a short-lived thread (an association's two threads
  live as long as the association) calls :meth:`CpuByRole.retire` as it ends, with its own
  ``time.thread_time()``, so nothing it spent after the last snapshot is lost. A thread that ends
  without retiring keeps what the last snapshot saw of it;
* **child processes** (the decode workers, edged/preprocess/pool.py, as ``decode``; the
  TensorRT worker processes, edged/backends/worker, as ``inference``) are read from
  ``/proc/<pid>/stat``, given to each :meth:`CpuByRole.snapshot` by role; a worker that is
  replaced keeps what the last snapshot saw of it;
* ``other`` is the rest of the process's CPU: the main thread, threads not named in
  :data:`ROLES`, what exited threads spent between the last snapshot and their end, and threads
  Python does not know — ONNX Runtime's own intra-op pool among them (with ``threads`` other
  than 1, part of the inference on the CPU backend is there, not under ``inference``).

Every role's value only grows (a Prometheus counter): a role's total is what retired or gone
threads spent plus what its live threads have spent so far; a thread's time moves from "live"
to "gone" with the value last read; and no role is ever reported lower than before (a thread
renamed between two reads, as socketserver's request thread is, would otherwise take its time
to another role). The resolution of a live thread is the kernel's clock tick (10 ms); totals
over seconds are what this is for. One instance per process (:data:`CPU`), like
``process_cpu_seconds_total``: daemons sharing a process (tests, ``edged
demo``) share it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

#: Thread-name prefix → role. The first matching prefix wins; unmatched threads are ``other``.
ROLES: tuple[tuple[str, str], ...] = (
    ("dicom-", "dicom"),  # a connection's accept handler, refusals (associations: their cpu_role)
    ("AcceptorServer", "dicom"),  # pynetdicom's accept loop (edged/sources/dicom/transport.py)
    ("spool-", "dicom"),  # the spool's rescan
    ("commitment-", "dicom"),  # storage commitment reports
    ("preprocess-", "preprocess"),  # take a spooled image to the decode workers and the batcher
    ("batcher-", "inference"),  # form batches and run the backend
    ("worker-", "inference"),  # the TensorRT worker process's pipe readers
    ("result-writer", "results"),  # build results, commit them to the outbox
    ("mqtt-", "results"),  # the publisher's own thread
    ("paho-mqtt", "results"),  # paho's network thread
    ("sr-", "results"),  # DICOM SR results sent back to a PACS
    ("camera-", "cameras"),
    ("telemetry", "telemetry"),
    ("edged-energy", "telemetry"),
    ("edged-metrics", "control"),
    ("edged-control", "control"),
)

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def role_of(thread_name: str) -> str:
    for prefix, role in ROLES:
        if thread_name.startswith(prefix):
            return role
    return "other"


def stat_cpu_s(path: Path) -> float | None:
    """utime + stime of a ``/proc/.../stat`` file in seconds; None once the task is gone."""
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * TICK_S
    except (OSError, IndexError, ValueError):
        return None


class CpuByRole:
    """CPU seconds of this process and the children given to :meth:`snapshot`, by role (see the
    module docstring)."""

    def __init__(self, proc: Path = Path("/proc")):
        self._proc = proc
        self._lock = threading.Lock()
        self._done: dict[str, float] = {}  # retired or gone threads, children gone
        self._seen: dict[int, tuple[str, float]] = {}  # live tid → (role, CPU last read)
        self._retired: set[int] = set()  # tids whose time is in _done already
        self._child_seen: dict[int, tuple[str, float]] = {}
        self._child_done: dict[str, float] = {}  # children gone
        self._other = 0.0
        self._reported: dict[str, float] = {}  # what the last snapshot said, per role

    def retire(self, role: str | None = None) -> None:
        """Called by a thread as it ends: keep what it spent (``time.thread_time()``) under
        ``role`` (default: its ``cpu_role`` or its name's role). Later snapshots ignore it while
        it finishes."""
        spent, tid = time.thread_time(), threading.get_native_id()
        me = threading.current_thread()
        role = role or getattr(me, "cpu_role", None) or role_of(me.name)
        with self._lock:
            self._seen.pop(tid, None)
            self._retired.add(tid)
            self._done[role] = self._done.get(role, 0.0) + spent

    def snapshot(self, children: Mapping[str, Iterable[int]] | None = None) -> dict[str, float]:
        """``{role: CPU seconds}`` since the process started; every value only grows.
        ``children``: ``{role: pids}`` of this process's workers, counted under their role."""
        with self._lock:  # listed under the lock: no retire() or other snapshot between list and read
            live = {t.native_id: getattr(t, "cpu_role", None) or role_of(t.name) for t in threading.enumerate()
                    if t.native_id is not None}
            totals = dict(self._done)
            for tid in list(self._seen):
                if tid not in live:  # ended without retiring: keep what was last read
                    role, spent = self._seen.pop(tid)
                    self._done[role] = self._done.get(role, 0.0) + spent
                    totals[role] = totals.get(role, 0.0) + spent
            self._retired &= live.keys()
            for tid, role in live.items():
                if tid in self._retired:
                    continue
                spent = stat_cpu_s(self._proc / "self" / "task" / str(tid) / "stat")
                if spent is None:
                    spent = self._seen.get(tid, (role, 0.0))[1]
                self._seen[tid] = (role, spent)
                totals[role] = totals.get(role, 0.0) + spent
            threads = sum(totals.values())
            self._read_children(children or {}, totals)
            process = sum(os.times()[:2])
            self._other = max(self._other, process - threads)
            totals["other"] = totals.get("other", 0.0) + self._other
            for role in self._reported.keys() | totals.keys():  # a renamed thread moves its role
                totals[role] = self._reported[role] = max(totals.get(role, 0.0), self._reported.get(role, 0.0))
            return totals

    def _read_children(self, children: Mapping[str, Iterable[int]], totals: dict[str, float]) -> None:
        for role, spent in self._child_done.items():
            totals[role] = totals.get(role, 0.0) + spent
        alive: set[int] = set()
        for role, pids in children.items():
            for pid in pids:
                spent = stat_cpu_s(self._proc / str(pid) / "stat")
                if spent is None:
                    continue
                alive.add(pid)
                self._child_seen[pid] = (role, spent)
                totals[role] = totals.get(role, 0.0) + spent
        for pid in set(self._child_seen) - alive:  # replaced or stopped: keep what was last read
            role, spent = self._child_seen.pop(pid)
            self._child_done[role] = self._child_done.get(role, 0.0) + spent
            totals[role] = totals.get(role, 0.0) + spent


#: The process's one instance.
CPU = CpuByRole()
