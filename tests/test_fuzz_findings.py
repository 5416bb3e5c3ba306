"""Defects the fuzz suite (tools/fuzz) found in the daemon, one regression test each."""

from __future__ import annotations

import io
import logging
import struct
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.fuzz import datasets as D  # noqa: E402
from tools.fuzz.phi import PhiRegistry  # noqa: E402
from helpers import send_file  # noqa: E402


def test_headers_edged_cannot_understand_are_0xC000(daemon_factory, collector, tmp_path):
    """Two headers the fuzz suite found answered with the wrong status:

    * encapsulated Pixel Data of undefined length whose sequence delimiter never comes: pydicom
      warns and returns an *empty* dataset, so the SOP Instance UID is simply absent — a
      dataset edged cannot understand (0xC000 ``unreadable``), not one that names another
      instance (0xA900 ``mismatch``);
    * Columns sent as UL 0xFFFFFFFF: no image has more than 65535 columns (the attribute is
      US), so the header is invalid (0xC000 ``bad_image_header``), not an image too large for
      the device (0xA700 ``too_large``, which invites the sender to retry it forever).
    """
    import random

    rng = random.Random(5)
    phi = PhiRegistry(rng)
    d = daemon_factory().start()

    who = phi.identity()
    elems = D.base_image(rng, who)
    fragment = b"\xff\xd8" + bytes(rng.randrange(256) for _ in range(998))
    items = struct.pack("<HHL", 0xFFFE, 0xE000, 0) + struct.pack("<HHL", 0xFFFE, 0xE000, len(fragment)) + fragment
    elems = D.changed(elems, 0x7FE00010, vr="OB", value=items, length=D.UNDEFINED)  # no (FFFE,E0DD) delimiter
    path = tmp_path / "no-delimiter.dcm"
    path.write_bytes(D.file_bytes(D.encode(elems, D.JPEG_LOSSLESS), D.CR, who.instance_uid, D.JPEG_LOSSLESS))
    assert send_file(d.port, path, [D.JPEG_LOSSLESS], sop_class=D.CR) == 0xC000

    who = phi.identity()
    elems = D.changed(D.base_image(rng, who), 0x00280011, vr="UL", value=b"\xff\xff\xff\xff")
    path = tmp_path / "columns.dcm"
    path.write_bytes(D.file_bytes(D.encode(elems, D.EXPLICIT_LE), D.CR, who.instance_uid, D.EXPLICIT_LE))
    assert send_file(d.port, path, [D.EXPLICIT_LE], sop_class=D.CR) == 0xC000

    collector.wait_for(lambda c: len(c.events("rejected")) == 2)
    assert [(e["reason"], e["status"]) for e in collector.events("rejected")] == [
        ("unreadable", 0xC000), ("bad_image_header", 0xC000)]
    assert d.terminate() == 0


def test_an_exception_that_kills_a_thread_is_logged_redacted_with_priority(capsys):
    """pynetdicom re-raises what its state machine cannot handle (a presentation context id
    of 0, a command set without CommandDataSetType…), which kills that association's thread.
    Python's default hook printed the traceback straight to stderr: past the PHI redaction,
    past the rate limiter, and under journald without a priority prefix on any line."""
    from edged.service.logsetup import setup_logging

    stream = io.StringIO()
    handler = setup_logging("info", journald=True, stream=stream)
    uid = "1.2.826.0.1.3680043.9.7433.4711471147.12"

    def die() -> None:
        raise ValueError(f"Invalid 'Affected SOP Instance UID' value '{uid}' for DOE^JANE")

    try:
        t = threading.Thread(target=die, name="run_reactor")
        t.start()
        t.join()
    finally:
        logging.getLogger().removeHandler(handler)
    out = stream.getvalue()
    assert "ValueError" in out and "run_reactor" in out, out
    assert uid not in out and "DOE^JANE" not in out
    assert all(line.startswith("<3>") for line in out.splitlines()), out
    assert "Traceback" not in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _restore_excepthook():
    hook = threading.excepthook
    yield
    threading.excepthook = hook


def test_peer_bytes_in_a_log_message_cannot_forge_lines_or_drive_a_terminal():
    """pydicom quotes what it could not use (``Unknown encoding '…'``) from the peer's dataset:
    the fuzz run's log became a binary file (NUL, DEL, ESC). A newline in such a value would
    forge a whole log line; an escape sequence would act on the terminal reading the log.
    Control characters in a message are escaped; a traceback keeps its line breaks."""
    from edged.service.logsetup import setup_logging

    stream = io.StringIO()
    handler = setup_logging("info", journald=True, stream=stream)
    try:
        logging.getLogger("peer.library").warning("Unknown encoding '%s' - using default encoding instead",
                                             "ISO_IR 100\n<3>edged.dicom: instance quarantined\x1b[2J\x00\x7f\r")
        try:
            raise ValueError("bad\x1b[31m value")
        except ValueError:
            logging.getLogger("edged.test").exception("failed")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == ("<4>peer.library: Unknown encoding 'ISO_IR 100\\n<3>edged.dicom: instance quarantined"
                        "\\x1b[2J\\x00\\x7f\\r' - using default encoding instead"), lines[0]
    assert lines[1] == "<3>edged.test: failed" and lines[2] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>ValueError: bad\\x1b[31m value"
