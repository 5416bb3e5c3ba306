"""One fuzz run from schedule to verdict, for ``make fuzz`` and for the test suite's fixed subset.

:func:`schedule` is deterministic in ``(n, seed, fast)``: every family at least once, the rest
drawn by weight, and the transport families (seconds each, hundreds of MB) at fixed counts
spread through the run — full size for ``make fuzz``, a small fast form for the subset.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from . import attacks, checks, families, transport
from .cases import Case
from .families import Gen
from .observe import LogTail, Observer
from .phi import PhiScanner
from .runner import ECHO_DEADLINE, Runner, fuzzer_settings
from .target import Target

Factory = Callable[[Gen], Case]
WEIGHTED: dict[str, tuple[int, Factory]] = {**families.FAMILIES, **attacks.FAMILIES}


def transport_cases(fast: bool) -> list[tuple[str, Factory]]:
    if fast:
        return [
            ("partial_upload", transport.partial_upload),
            ("giant_pdu", partial(transport.giant_pdu, mb=96)),
            ("deflate_bomb", partial(transport.deflate_bomb, mb=300)),  # above any sane inflate limit
            ("trickle", transport.trickle),
            ("conn_flood", transport.conn_flood),
            ("slot_hold", transport.slot_hold),
        ]
    return ([("partial_upload", partial(transport.partial_upload, size=s)) for s in (64 << 10, 4 << 20) * 10]
            + [("giant_pdu", partial(transport.giant_pdu, mb=512))] * 4
            + [("deflate_bomb", partial(transport.deflate_bomb, mb=768))] * 3
            + [("trickle", transport.trickle)] * 2 + [("trickle", partial(transport.trickle, hold_s=45))]
            + [("conn_flood", transport.conn_flood)] * 3 + [("slot_hold", transport.slot_hold)] * 4)


def schedule(n: int, seed: int, fast: bool, include_transport: bool = True) -> list[tuple[str, Factory]]:
    rng = random.Random(f"schedule:{seed}")
    heavy = transport_cases(fast) if include_transport else []
    names = sorted(WEIGHTED)
    rest = max(0, n - len(heavy) - len(names))
    drawn = names + rng.choices(names, weights=[WEIGHTED[k][0] for k in names], k=rest)
    rng.shuffle(drawn)
    rng.shuffle(heavy)
    plan: list[tuple[str, Factory]] = [(k, WEIGHTED[k][1]) for k in drawn]
    for i, item in enumerate(heavy):  # spread evenly, in a seeded order
        plan.insert((i + 1) * len(plan) // (len(heavy) + 1) + i, item)
    return plan


@dataclass
class Session:
    """A daemon with its broker, an observer and a runner: what one run or one test module uses."""

    target: Target
    scanner: PhiScanner
    observer: Observer
    log: LogTail
    runner: Runner
    gen: Gen
    undo_settings: Callable[[], None]

    @classmethod
    def open(cls, workdir: Path, seed: int, rss_cap_mb: int = 1024, as_cap_mb: int = 6144,
             progress: Callable[[str], None] = print) -> "Session":
        undo = fuzzer_settings()
        target = Target(workdir, rss_cap_mb=rss_cap_mb, as_cap_mb=as_cap_mb)
        gen = Gen(seed)
        scanner = PhiScanner(gen.phi)
        target.broker.start()
        observer = Observer(target.broker.port, scanner)
        target.start()
        return cls(target, scanner, observer, LogTail(target.log_path, scanner), Runner(target, workdir, progress), gen,
                   undo)

    def run(self, plan: list[tuple[str, Factory]], only: list[int] | None = None,
            progress_every_s: float = 15.0) -> Iterator[int]:
        """Run the plan (or only its cases with these 0-based indices: a replay)."""
        indices = list(range(len(plan))) if only is None else only
        last = time.monotonic()
        began = last
        for done, i in enumerate(indices, 1):
            self.runner.run_case(plan[i][1](self.gen.at(i)), i)
            if done % 50 == 0:
                self.log.poll()
            now = time.monotonic()
            if now - last >= progress_every_s or done == len(indices):
                last = now
                self.runner.progress(self.progress_line(done, len(indices), now - began))
            yield i

    def progress_line(self, done: int, total: int, elapsed: float) -> str:
        r, t = self.runner, self.target
        rate = done / elapsed if elapsed else 0.0
        eta = (total - done) / rate / 60 if rate else 0.0
        rss = t.rss_mb()
        return (f"[{done:6d}/{total}] {100 * done / total:5.1f}%  {rate:5.1f} cases/s  eta {eta:5.1f} min  "
                f"crashes {len(r.crashes)}  hangs {len(r.hangs)}  acked {sum(r.acks.values())}  "
                f"mqtt {self.observer.count}  phi {self.scanner.count}  rss {rss or 0:.0f} MB")

    def settle(self, timeout: float = 180.0) -> bool:
        """Wait until every acknowledged instance has its outcome (retries back off for seconds)."""
        ok = self.observer.wait_quiet(lambda: checks.complete(self.runner, self.observer), timeout)
        time.sleep(1.0)  # a late duplicate or second outcome would show up now
        return ok

    def finish(self, seconds: float, args: dict) -> dict:
        self.log.poll()
        return checks.summary(self.runner, self.observer, self.scanner, self.log, seconds,
                              {**args, "echo_deadline_s": ECHO_DEADLINE, "rss_cap_mb": self.target.rss_cap_mb})

    def close(self) -> None:
        self.observer.close()
        self.target.stop()
        self.undo_settings()
