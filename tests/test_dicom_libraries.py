"""Process-wide pydicom/pynetdicom settings the daemon makes (edged.daemon.configure_dicom_libraries).

pynetdicom's standard event handlers format a description of every negotiation and DIMSE
message; below log_level debug edged drops those lines anyway, so the handlers are not bound at
all then (``_config.LOG_HANDLER_LEVEL = "none"``), and are at debug, where the lines are shown.
"""

from __future__ import annotations

import tempfile

import pytest
from pydicom import config as pydicom_config
from pynetdicom import AE, _config, evt
from pynetdicom._handlers import standard_dimse_recv_handler, standard_pdu_recv_handler
from pynetdicom.association import Association

from edged.daemon import configure_dicom_libraries
from edged.spool.spool import Spool


@pytest.mark.parametrize(("level", "standard"), [("info", False), ("warning", False), ("debug", True)])
def test_standard_log_handlers_are_bound_only_at_debug(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                       level: str, standard: bool) -> None:
    for target, name in ((_config, "LOG_HANDLER_LEVEL"), (tempfile, "tempdir"),
                         (pydicom_config.settings, "reading_validation_mode")):
        monkeypatch.setattr(target, name, getattr(target, name))  # restored after the test
    configure_dicom_libraries(Spool(tmp_path / "spool", 1 << 30), level)
    assert _config.LOG_HANDLER_LEVEL == ("standard" if standard else "none")
    assoc = Association(AE(), "acceptor")
    bound = {h[0] if isinstance(h, tuple) else h
             for event in (evt.EVT_DIMSE_RECV, evt.EVT_PDU_RECV) for h in assoc.get_handlers(event) or []}
    assert (standard_dimse_recv_handler in bound) is standard
    assert (standard_pdu_recv_handler in bound) is standard
