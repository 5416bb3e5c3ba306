"""Journald and console formats, JOURNAL_STREAM detection, rate limiting, PHI redaction."""

from __future__ import annotations

import io
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.service.logsetup import RateLimitFilter, redact_phi, setup_logging, stream_is_journal


@pytest.fixture
def clean_root() -> Iterator[None]:
    """setup_logging configures the root logger; give it back as pytest had it."""
    root, chatty = logging.getLogger(), logging.getLogger("pynetdicom")
    handlers, level, chatty_level = root.handlers[:], root.level, chatty.level
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    chatty.setLevel(chatty_level)
    logging.captureWarnings(False)


def test_journald_lines_carry_syslog_priorities(clean_root: None) -> None:
    out = io.StringIO()
    setup_logging("debug", journald=True, stream=out)
    log = logging.getLogger("edged.batcher")
    log.debug("queue %d/%d", 3, 64)
    log.info("batch of %d sent", 8)
    log.warning("queue full")
    log.error("backend failed")
    log.critical("cannot continue")
    assert out.getvalue().splitlines() == [
        "<7>edged.batcher: queue 3/64",
        "<6>edged.batcher: batch of 8 sent",
        "<4>edged.batcher: queue full",
        "<3>edged.batcher: backend failed",
        "<2>edged.batcher: cannot continue",
    ]


def test_every_traceback_line_keeps_the_error_priority(clean_root: None) -> None:
    out = io.StringIO()
    setup_logging("info", journald=True, stream=out)
    try:
        raise ValueError("engine file truncated")
    except ValueError:
        logging.getLogger("edged.trt").exception("cannot load engine")
    lines = out.getvalue().splitlines()
    assert lines[0] == "<3>edged.trt: cannot load engine"
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>ValueError: engine file truncated"


def test_console_lines_have_readable_timestamps(clean_root: None) -> None:
    out = io.StringIO()
    setup_logging("INFO", journald=False, stream=out)
    logging.getLogger("edged.mqtt").info("connected to %s", "broker:1883")
    logging.getLogger("edged.mqtt").debug("not shown at INFO")
    line, = out.getvalue().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO     edged\.mqtt: "
                        r"connected to broker:1883", line), line


def test_journal_stream_is_detected_by_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as f:
        st = os.fstat(f.fileno())
        assert stream_is_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not stream_is_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not stream_is_journal(f, {})
        assert not stream_is_journal(f, {"JOURNAL_STREAM": "garbage"})
    assert not stream_is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def test_setup_autodetects_and_replaces_its_handler(clean_root: None, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "journal", "w") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup_logging("info", stream=f)
        setup_logging("info", stream=f)  # twice: still one handler, one line per record
        logging.getLogger("edged").warning("once")
    assert (tmp_path / "journal").read_text() == "<4>edged: once\n"


def test_rejects_unknown_levels() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging("verbose")


def test_repeated_errors_are_suppressed_then_summarized(clean_root: None) -> None:
    now = [1000.0]
    out = io.StringIO()
    handler = setup_logging("info", journald=True, stream=out)
    limiter = RateLimitFilter(burst=3, interval=10.0, clock=lambda: now[0])
    handler.removeFilter(handler.limiter)
    handler.addFilter(limiter)
    handler.limiter = limiter
    log = logging.getLogger("edged.mqtt")
    for attempt in range(50):
        log.error("publish to %s failed: attempt %d", "broker", attempt)
        log.info("retrying")  # INFO is never rate limited
    log.error("other error")  # another template has its own budget
    lines = out.getvalue().splitlines()
    errors = [line for line in lines if "publish" in line]
    assert errors == [f"<3>edged.mqtt: publish to broker failed: attempt {i}" for i in range(3)]
    assert lines.count("<6>edged.mqtt: retrying") == 50
    assert "<3>edged.mqtt: other error" in lines

    now[0] += 11  # the window ends; the next one reports what was dropped
    log.error("publish to %s failed: attempt %d", "broker", 99)
    assert out.getvalue().splitlines()[-1] == (
        "<3>edged.mqtt: publish to broker failed: attempt 99 [suppressed 47 similar messages in "
        "the last 11 s]")

    for attempt in range(5):
        log.error("publish to %s failed: attempt %d", "broker", attempt)
    handler.close()  # shutdown reports the count nobody has seen yet
    assert out.getvalue().splitlines()[-1] == (
        "<4>edged.logging: edged.mqtt: suppressed 3 similar messages like "
        '"publish to %s failed: attempt %d"')


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = RateLimitFilter(burst=1, interval=60.0, max_keys=8, clock=lambda: 0.0)
    for i in range(100):
        record = logging.LogRecord("edged", logging.ERROR, __file__, 1, f"distinct {i}", None, None)
        assert limiter.filter(record)
    assert len(limiter._windows) <= 8


@pytest.mark.parametrize("text, expected", [
    ("stored instance for DOE^JOHN^^^ from CT1", "stored instance for [redacted-PN] from CT1"),
    ("name='VAN DER BERG^ANNA' ok", "name='[redacted-PN]' ok"),
    ("lookup PatientID=12345678, AccessionNumber: A77 done",
     "lookup PatientID=[redacted], AccessionNumber: [redacted] done"),
    ("(0010, 0010) Patient's Name                      PN: 'DOE^JOHN'\n(0008, 0060) Modality  CS: 'CR'",
     "(0010,xxxx) [redacted]\n(0008, 0060) Modality  CS: 'CR'"),
    ("sop 1.2.840.10008.5.1.4.1.1.1 batch 8/8 in 42 ms", "sop 1.2.840.10008.5.1.4.1.1.1 batch 8/8 in 42 ms"),
    ("    return run(batch)\n           ~~~^^^^^^^", "    return run(batch)\n           ~~~^^^^^^^"),
])
def test_phi_shapes_are_redacted_and_normal_lines_untouched(text: str, expected: str) -> None:
    assert redact_phi(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Unknown encoding 'ACC978801188' - using default encoding instead",
     "Unknown encoding '[redacted]' - using default encoding instead"),
    ("Incorrect value for Specific Character Set 'DOE JOHN' - assuming 'ISO_IR 100'",
     "Incorrect value for Specific Character Set '[redacted]' - assuming 'ISO_IR 100'"),
    ("Value 'ISO_IR 192' for Specific Character Set does not allow code extensions, ignoring: ISO 2022 IR 87, A77",
     "Value 'ISO_IR 192' for Specific Character Set does not allow code extensions, ignoring: ISO 2022 IR 87, "
     "[redacted]"),
    ("Value 'SMITH' cannot be used as code extension, ignoring it",
     "Value '[redacted]' cannot be used as code extension, ignoring it"),
    ("Failed to decode byte string with encodings: latin_1, shift_jis - using replacement characters",
     "Failed to decode byte string with encodings: latin_1, shift_jis - using replacement characters"),
    ("Failed to decode byte string with encoding 'H123' - using replacement characters",
     "Failed to decode byte string with encoding '[redacted]' - using replacement characters"),
    ("spooled 'cr.dcm' for chexnet", "spooled 'cr.dcm' for chexnet"),  # no charset warning: quotes stay
])
def test_pydicom_charset_warnings_keep_only_defined_terms(text: str, expected: str) -> None:
    """Defect (make fuzz, seed 19): pydicom quoted a dataset's Specific Character Set value, an
    accession number, into the log."""
    assert redact_phi(text) == expected


def test_a_pydicom_charset_warning_is_redacted_on_its_way_to_the_log(clean_root: None) -> None:
    """Through pydicom's own warning, both as its logger's line and as the captured warning."""
    import warnings

    from pydicom.charset import decode_bytes

    out = io.StringIO()
    setup_logging("info", journald=True, stream=out)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        decode_bytes(b"abc", ["ACC978801188"], [])
    assert "Unknown encoding '[redacted]'" in out.getvalue() and "ACC978801188" not in out.getvalue()


def test_redaction_applies_to_formatted_output(clean_root: None) -> None:
    out = io.StringIO()
    setup_logging("debug", journald=True, stream=out)
    logging.getLogger("edged.scp").warning("rejecting study of %s", "DOE^JANE")
    assert out.getvalue() == "<4>edged.scp: rejecting study of [redacted-PN]\n"


def test_pynetdicom_debug_dumps_stay_off_even_at_debug(clean_root: None) -> None:
    setup_logging("debug", journald=True, stream=io.StringIO())
    assert logging.getLogger("pynetdicom").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("edged").getEffectiveLevel() == logging.DEBUG


def test_dicom_uids_are_redacted_but_addresses_and_versions_are_not():
    from edged.service.logsetup import redact_phi

    assert redact_phi("value '1.2.840.0999.777.02.2' is odd") == "value '[redacted-UID]' is odd"
    assert redact_phi("study 2.25.329800735698586629295641978511506172918") == "study [redacted-UID]"
    assert redact_phi("peer 127.0.0.1, onnxruntime 1.32.0") == "peer 127.0.0.1, onnxruntime 1.32.0"


def test_a_uid_glued_to_an_escaped_nul_is_redacted():
    """Defect (issue #8): pydicom's repr of a value with a NUL puts '\\X00' right before the UID,
    and the old lookbehind let it through."""
    assert redact_phi("value 'CR\\X001.2.826.0.1.3680043.8.498.269858854' swallowed") == \
        "value 'CR\\X[redacted-UID]' swallowed"


@pytest.mark.parametrize("hostile", [
    "A" * 1_000_000,  # one long token without a caret: every start position used to scan to the end
    "1" * 1_000_000,
    "1." * 500_000,
    "'" + "x" * 1_000_000,
    "PatientName=" + "x" * 1_000_000,
    "(0010,0010)" + "^" * 1_000_000,
    ("DOE^" * 250_000),
    "Unknown encoding '" + "x" * 1_000_000,
    "ignoring: " + "a, " * 300_000,
])
def test_redaction_is_linear_and_bounded(hostile: str):
    """Defect (issue #8): a 64 KB BodyPartExamined stalled the daemon 44-52 s in the quadratic regex."""
    started = time.perf_counter()
    out = redact_phi(hostile)
    assert time.perf_counter() - started < 1.0
    assert len(out) < 9_000 and "more characters cut" in out


def test_a_huge_line_on_one_thread_does_not_hold_up_logging_on_another(clean_root: None) -> None:
    """Redaction runs before the handler lock, on a bounded prefix: a peer's 5 MB value logged by
    one association never makes another thread's log call wait (it waited 77 s)."""
    setup_logging("info", journald=True, stream=io.StringIO())
    log = logging.getLogger("edged.dicom")
    big = "BODYPART^" + "Z" * 5_000_000
    started = threading.Event()
    waited: list[float] = []

    def noisy() -> None:
        started.set()
        for _ in range(3):
            log.warning("odd value %s", big)

    def quiet() -> None:
        started.wait(5)
        t0 = time.perf_counter()
        log.warning("a normal line")
        waited.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=noisy), threading.Thread(target=quiet)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert waited and waited[0] < 0.5, waited


def test_pynetdicom_per_image_info_shows_only_at_debug() -> None:
    import io

    for level, journald, expect in (("info", True, None), ("debug", True, "<7>pynetdicom._handlers: Received Store Request"),
                                    ("debug", False, "DEBUG    pynetdicom._handlers: Received Store Request")):
        out = io.StringIO()
        handler = setup_logging(level, journald=journald, stream=out)
        try:
            logging.getLogger("pynetdicom._handlers").info("Received Store Request")
            logging.getLogger("pynetdicom.assoc").warning("Association Aborted")
            logging.getLogger("pynetdicom.dsutils").debug("(0010,0010) PN [DOE^JANE]")  # never: PHI at DEBUG
        finally:
            logging.getLogger().removeHandler(handler)
        text = out.getvalue()
        assert "Association Aborted" in text and "DOE" not in text
        if expect is None:
            assert "Received Store Request" not in text
        else:
            assert expect in text
