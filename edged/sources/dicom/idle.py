"""The association idle rule: edged's idle timeout outlasts every sender's close delay.

PACS and routers keep an association open for a while after their last C-STORE so that the
next image reuses it (Orthanc: ``DicomAssociationCloseDelay``, 5 s by default; routers commonly
30-60 s). pynetdicom closes an association that has received nothing for ``network_timeout``
(``dicom.network_timeout_s``) with an A-ABORT. If that fires first, the sender writes its next
image into a closed association ("Broken pipe") and, depending on the sender, loses it. So:

    dicom.network_timeout_s  >  the longest close delay of any sender  +  IDLE_MARGIN_S

The default (90 s) keeps Orthanc's default and a 60 s router safe. When edged's idle timeout
does fire, the peer kept an association idle longer than edged allows — exactly the
misconfiguration that loses images — so it is a warning that names the rule, not pynetdicom's
bare "Network timeout reached".
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from edged.sources.dicom import vocab

if TYPE_CHECKING:  # `edged check` reads problems() and must not import pynetdicom (and pydicom, numpy)
    from pynetdicom import evt

log = logging.getLogger("edged.dicom")

IDLE_MARGIN_S = 10.0
ORTHANC_DEFAULT_CLOSE_DELAY_S = 5.0
LONGEST_COMMON_CLOSE_DELAY_S = 60.0


def problems(network_timeout_s: float) -> list[str]:
    """What ``edged check`` and the daemon's start say about ``dicom.network_timeout_s``."""
    if network_timeout_s >= LONGEST_COMMON_CLOSE_DELAY_S + IDLE_MARGIN_S:
        return []
    if network_timeout_s < ORTHANC_DEFAULT_CLOSE_DELAY_S + IDLE_MARGIN_S:
        return [f"dicom.network_timeout_s is {network_timeout_s:g} s: a PACS that keeps associations open for "
                f"reuse (Orthanc's default DicomAssociationCloseDelay is 5 s) can lose images; keep it above every "
                f"sender's close delay + {IDLE_MARGIN_S:g} s (default 90)"]
    return [f"dicom.network_timeout_s is {network_timeout_s:g} s: safe for Orthanc's default close delay, not "
            f"for routers that keep associations open up to {LONGEST_COMMON_CLOSE_DELAY_S:g} s; keep it above every "
            f"sender's close delay + {IDLE_MARGIN_S:g} s (default 90)"]


def handle_aborted(event: evt.Event) -> None:
    """EVT_ABORTED: say so when *our* idle timer closed the association."""
    assoc = event.assoc
    dul = getattr(assoc, "dul", None)
    try:
        idle = bool(dul is not None and dul.idle_timer_expired() and assoc.is_acceptor)
    except Exception:  # pynetdicom internals changed: say nothing rather than fail the abort
        return
    if not idle:
        return
    calling = vocab.ae_title(assoc.requestor.ae_title)
    log.warning("association from %s closed after %g s without a request (dicom.network_timeout_s): if this peer "
                "keeps associations open for reuse, its close delay must be shorter than that by %g s or it may "
                "lose the image it sends at that moment", calling, assoc.network_timeout or 0, IDLE_MARGIN_S)
