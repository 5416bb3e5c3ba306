"""The loop: run each case against the live daemon, then prove it still serves.

Per case: reset the daemon's RSS high-water mark, run the case, read the peak, send a C-ECHO
from an allowed host (a failed echo within :data:`ECHO_DEADLINE` is a hang), and notice a
daemon that exited (a crash; it is restarted so the run goes on, and everything it had
acknowledged must still come out after the restart). Instances answered 0x0000 are counted
by the daemon's pseudonym of the request's SOP Instance UID, for the outcome check at the end.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pynetdicom import AE, _config
from pynetdicom.dsutils import decode

from . import datasets as D
from . import pdu as P
from .cases import Case, Outcome, StoreCase
from .target import ECHO_HOST, Target

ECHO_DEADLINE = 15.0
SEND_TIMEOUT = 30.0


def fuzzer_settings() -> Callable[[], None]:
    """The fuzzer's process-wide settings: pynetdicom sends a file's dataset bytes exactly as
    generated, and neither it nor pydicom complains about what is sent on purpose (in this
    process; the daemon logs as ever). Returns the undo, for a test process that goes on."""
    levels = {name: logging.getLogger(name).level for name in ("pynetdicom", "pydicom")}
    filters, chunked = warnings.filters[:], _config.STORE_SEND_CHUNKED_DATASET
    for name in levels:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message="Invalid value for VR", category=UserWarning)
    _config.STORE_SEND_CHUNKED_DATASET = True

    def undo() -> None:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        warnings.filters[:] = filters
        _config.STORE_SEND_CHUNKED_DATASET = chunked

    return undo


@dataclass
class FamilyStats:
    cases: int = 0
    answers: Counter = field(default_factory=Counter)
    case_failures: int = 0
    crashes: int = 0
    hangs: int = 0
    harness_errors: int = 0
    acked: int = 0
    peak_growth_mb: float = 0.0
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)  # first failures, for the report


def canonical_uid(raw: str | bytes) -> str:
    """The request UID as the daemon sees it: decoded from the command set the way pynetdicom does."""
    ds = decode(BytesIO(P.c_store_rq(D.CR, raw)), True, True)
    return str(ds.AffectedSOPInstanceUID).strip()


class Runner:
    def __init__(self, target: Target, workdir: Path, progress=print):
        self.target, self.progress = target, progress
        self.port = target.port
        self.tmp = Path(tempfile.mkdtemp(prefix="cases-", dir=workdir))
        self.stats: dict[str, FamilyStats] = defaultdict(FamilyStats)
        self.acks: Counter[str] = Counter()  # instance pseudonym -> number of 0x0000 answers
        self.ack_family: dict[str, str] = {}
        self.crashes: list[str] = []
        self.hangs: list[str] = []
        self.rss_samples: list[tuple[int, float]] = []  # (case number, RSS MB after it)
        self.cases_run = 0
        self.slot_waits = 0  # echoes that first found the association table full
        self.echo_every = 1  # prove the daemon serves after every case (the fixed subset: every few)
        self.case_log = workdir / "cases.jsonl"
        self._base: float | None = None

    # -- what cases may call (ctx) ---------------------------------------------------------
    def echo(self, deadline: float = ECHO_DEADLINE, source: str = ECHO_HOST, wait_for_slot: bool = True) -> tuple[bool, str]:
        """A C-ECHO from ``source`` within ``deadline`` s. A refusal for a full association table
        is retried until the deadline (and counted: slots held by earlier malformed peers are
        issue #8 item 5, measured by its own family); anything else is the answer."""
        end = time.monotonic() + deadline
        waited = False
        while True:
            ok, why = self._echo_once(max(0.5, end - time.monotonic()), source)
            full = "Local limit exceeded" in why
            if not (full and wait_for_slot) or time.monotonic() >= end:
                break
            if not waited:
                waited = True
                self.slot_waits += 1
            time.sleep(0.25)
        if ok and time.monotonic() > end:
            return False, "slow"
        return ok, why

    def _echo_once(self, deadline: float, source: str) -> tuple[bool, str]:
        """One association with a C-ECHO, over the raw client (a pynetdicom SCU costs ~50 ms
        of thread start-up and polling; this takes a few)."""
        a = P.RawAssociation(self.port, {1: (P.VERIFICATION, [P.IMPLICIT_LE])}, calling="FUZZ_ECHO",
                             source=source, timeout=deadline)
        try:
            answer = a.open()
            if answer == "assoc_rj":
                return False, f"rejected ({P.reject_reason(a.reject)})"
            if answer != "assoc_ac":
                return False, answer
            a.send_message(1, P.c_echo_rq(), None)
            kind, status = a.response_status()
            a.release()
            return (True, "ok") if kind == "status" and status == 0 else (False, f"echo answer {kind} {status}")
        except OSError as exc:
            return False, f"{type(exc).__name__}"
        finally:
            a.close()

    def peak_growth(self) -> float | None:
        peak = self.target.peak_mb()
        return None if peak is None or self._base is None else peak - self._base

    def store(self, case: StoreCase) -> Outcome:
        return send_store(self, case)

    # -- the loop --------------------------------------------------------------------------
    def run_case(self, case: Case, index: int | None = None) -> None:
        """Run one case (``index``: its place in the plan, 0-based, for the case log)."""
        s = self.stats[case.family]
        s.cases += 1
        self.cases_run += 1
        self.target.reset_peak()
        self._base = self.target.rss_mb()
        start = time.monotonic()
        try:
            out = self.store(case) if isinstance(case, StoreCase) else case.run(self)
        except Exception as exc:  # the fuzzer's own failure, not the daemon's: counted apart
            out = Outcome(answers=["harness_error"])
            s.harness_errors += 1
            self._example(s, f"harness error in {case.variant}: {type(exc).__name__}: {exc}")
        s.seconds += time.monotonic() - start
        growth = self.peak_growth()
        if growth is not None:
            s.peak_growth_mb = max(s.peak_growth_mb, growth)
            out.peak_mb = round(growth, 1)
        s.answers.update(out.answers)
        for uid in out.acked:
            key = self.target.instance_key(canonical_uid(uid))
            self.acks[key] += 1
            self.ack_family[key] = case.family
            s.acked += 1
        self._record(case, start, out, index)
        if out.failures:
            s.case_failures += 1
            self._example(s, f"{case.variant}: {out.failures[0]}")
        self._after(case, s)

    def _after(self, case: Case, s: FamilyStats) -> None:
        code = self.target.check_exit()
        if code is None and self.cases_run % self.echo_every == 0:
            ok, why = self.echo()
            if not ok:
                code = self._exit_within(2.0)  # a daemon being killed (the RSS cap) is a crash, not a hang
                if code is None:
                    s.hangs += 1
                    self.hangs.append(f"{case.family}: {case.variant}: echo {why}")
                    self._example(s, f"hang after {case.variant}: echo {why}")
                    self.target.proc.kill()  # type: ignore[union-attr]
                    self.target.proc.wait()  # type: ignore[union-attr]
                    self.target.check_exit()
                    self.target.start()
                    return
        if code is not None:
            s.crashes += 1
            self.crashes.append(f"{case.family}: {case.variant}: exit {code}")
            self._example(s, f"daemon exited ({code}) after {case.variant}")
            self.target.start()
            return
        rss = self.target.rss_mb()
        if rss is not None and self.cases_run % 25 == 0:
            self.rss_samples.append((self.cases_run, rss))

    def _exit_within(self, seconds: float) -> int | None:
        end = time.monotonic() + seconds
        while True:
            code = self.target.check_exit()
            if code is not None or time.monotonic() >= end:
                return code
            time.sleep(0.1)

    def _record(self, case: Case, start: float, out: Outcome, index: int | None) -> None:
        """One line per case (wall clock, to read beside the daemon's log; ``case`` is what
        ``--replay`` takes)."""
        line = {"case": self.cases_run if index is None else index + 1, "t": time.time() - (time.monotonic() - start), "s": round(time.monotonic() - start, 3),
                "family": case.family, "variant": case.variant, "answers": out.answers, "failures": out.failures, "peak_mb": out.peak_mb}
        with open(self.case_log, "a") as f:
            f.write(json.dumps(line) + "\n")

    @staticmethod
    def _example(s: FamilyStats, text: str) -> None:
        if len(s.examples) < 5:
            s.examples.append(text[:300])


def send_store(r: Any, case: StoreCase) -> Outcome:
    """Send ``case`` over a real association: pynetdicom's SCU, or the raw client when the
    request itself is something pynetdicom would refuse to encode."""
    out = Outcome()
    for n in range(case.repeat):
        status = _send_raw(r, case, n) if case.via == "raw" else _send_pynetdicom(r, case)
        out.answers.append(status)
        if status == "0x0000":
            out.acked.append(case.instance if isinstance(case.instance, str) else case.instance.decode("latin-1"))
    return out


def _send_pynetdicom(r: Any, case: StoreCase) -> str:
    path = r.tmp / "case.dcm"
    path.write_bytes(D.file_bytes(case.dataset, case.sop_class, case.instance, case.syntax))
    ae = AE(ae_title="FUZZ_MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = SEND_TIMEOUT
    ae.add_requested_context(str(case.sop_class), [case.syntax])
    assoc = ae.associate("127.0.0.1", r.port, ae_title="EDGED")
    if not assoc.is_established:
        return "assoc_rj" if assoc.is_rejected else "assoc_abort" if assoc.is_aborted else "assoc_failed"
    try:
        status = assoc.send_c_store(path)
        if "Status" in status:
            return f"0x{int(status.Status):04X}"
        return "abort" if assoc.is_aborted else "no_status"
    except ValueError:  # no accepted context for this SOP class / syntax
        return "context_refused"
    finally:
        if assoc.is_established:
            assoc.release()


def _send_raw(r: Any, case: StoreCase, n: int) -> str:
    cls = case.context_class or case.sop_class
    a = P.RawAssociation(r.port, {1: (cls, [case.syntax])}, calling="FUZZ_RAW", timeout=SEND_TIMEOUT)
    try:
        answer = a.open()
        if answer != "assoc_ac":
            return answer
        if 1 not in a.accepted:
            return "context_refused"
        kind, status = a.store(1, case.sop_class, case.instance, case.dataset, message_id=n + 1)
        a.release()
        return f"0x{status:04X}" if kind == "status" and status is not None else kind
    except OSError:
        return "reset"
    finally:
        a.close()

