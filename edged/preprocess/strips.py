"""Row strips of one image, processed by the calling thread plus a small shared thread pool.

Why threads help here: the full-size work is a few large numpy/cv2 calls per strip (``np.take``
over ~250 k pixels, row sums, a resize), and those release the GIL, so strips really run on
several cores. Why strips of a few hundred kilobytes: a strip's intermediate stays in the core's
L2 cache between the calls that produce and consume it, instead of making a round trip through
memory as a 7 MB full-size image would.

How work is shared: strips are numbered and every participant (the caller and up to
``MAX_PARALLEL - 1`` pool threads) repeatedly claims the next unclaimed number. If the pool is
busy with another caller's strips, this caller simply does more of its own: a call can be
slowed down by a concurrent one but never waits for a strip nobody is working on.

Where it does not pay: a decode worker process (:mod:`edged.preprocess.pool`) calls
:func:`caller_only`. Its siblings already run images in parallel, and a strip of a straight-line
chain (:mod:`edged.preprocess.affine`) is so little work that handing strips to a second thread
cost more CPU than it saved time: on a 2-vCPU x86 VM the chest CR's shrink took 5.7 ms of CPU
(4.0 ms wall) on two threads against 3.1 ms (3.1 ms wall) on one (issue #14).

Safety: the pool holds no per-call state. ``task(k)`` must write only its own part of buffers
the caller allocated, and :func:`run` returns (or raises) only after every claimed strip has
finished, so no task outlives the call that owns its buffers and concurrent calls share none.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

#: Cores one image may use (caller + pool threads): leaves the inference runtime and a second
#: preprocessing worker some room on a 4–8 core edge device.
MAX_PARALLEL = 4
#: Full-size pixels per strip: 512 KiB of uint16, comfortably inside a core's L2, and enough
#: work (~0.15 ms) that the per-strip Python and hand-off costs stay small.
STRIP_PIXELS = 1 << 18

_pool: ThreadPoolExecutor | None = None
_helpers = 0
_pool_lock = threading.Lock()
_caller_only = False


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def caller_only() -> None:
    """From now on, in this process, every strip runs on the thread that asked for it."""
    global _caller_only
    _caller_only = True


def _get_pool() -> tuple[ThreadPoolExecutor | None, int]:
    """The shared pool (created on first use) and its thread count; (None, 0) on one core or
    after :func:`caller_only`."""
    global _pool, _helpers
    if _caller_only:
        return None, 0
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                helpers = min(MAX_PARALLEL, _cores()) - 1
                if helpers < 1:
                    return None, 0
                _helpers = helpers  # before _pool: readers check _pool without the lock
                _pool = ThreadPoolExecutor(max_workers=helpers, thread_name_prefix="edged-strips")
    return _pool, _helpers


def _forget_pool() -> None:
    """A forked child inherits the pool object but not its threads: start afresh there."""
    global _pool, _helpers, _pool_lock
    _pool, _helpers, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def spans(stop: int, size: int) -> list[tuple[int, int]]:
    """``range(stop)`` cut into ``(start, end)`` pieces of ``size`` (the last may be shorter)."""
    size = max(1, size)
    return [(start, min(start + size, stop)) for start in range(0, stop, size)]


def run(task: Callable[[int], object], count: int) -> None:
    """``task(k)`` for every ``k`` in ``range(count)``, shared between the caller and the pool.

    An exception from any task is re-raised here, once every started task has finished.
    """
    pool, helpers = _get_pool() if count > 1 else (None, 0)
    claims = iter(range(count))
    claim_lock = threading.Lock()

    def work() -> None:
        while True:
            with claim_lock:
                k = next(claims, None)
            if k is None:
                return
            task(k)

    futures: list[Future] = [pool.submit(work) for _ in range(min(helpers, count - 1))] if pool else []
    try:
        work()
    except BaseException:
        with claim_lock:
            for _ in claims:  # start nothing more
                pass
        raise
    finally:
        for future in futures:
            if not future.cancel():  # a helper still queued behind other callers never starts;
                future.exception()  # one that started may be writing our buffers: wait for it
    for future in futures:
        if not future.cancelled():
            future.result()
