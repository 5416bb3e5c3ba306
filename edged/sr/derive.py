"""From a committed result to its DICOM SR job, at the moment the result is written.

The result writer calls :class:`SrDerivation` for every result of a model with ``sr: true``,
while the image's spool file still exists (it is removed only after the result's transaction),
and the job it returns is committed in that same transaction. The patient and study identity
are read from the spooled file here, into the SR, and go nowhere else: not into the result
payload, not into a log line (which names the instance pseudonym only).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from edged.privacy import Pseudonymizer
from edged.sources.work import WorkItem
from edged.spool.spool import Spool
from edged.sr.builder import Finding, Uids, build, capture, derived_uid, encode
from edged.sr.outbox import SrJob

log = logging.getLogger("edged.sr")


class SrDerivation:
    def __init__(self, spool: Spool, pseudo: Pseudonymizer, node: str, models: set[str]):
        self.spool, self.pseudo, self.node, self.models = spool, pseudo, node, models

    def __call__(self, item: WorkItem, model: Any, payload: dict) -> SrJob | None:
        """The SR for one result, or None when this model does not report in DICOM. Raises when
        the SR cannot be built (the caller records that as an event; the result is kept)."""
        if model.name not in self.models:
            return None
        source = capture(self.spool.path(item.key))
        m = model.manifest
        message_id = payload["message_id"]
        uids = Uids(
            instance=derived_uid(self.pseudo.message_id("sr-instance", message_id)),
            series=derived_uid(self.pseudo.message_id("sr-series", m.name, item.group or item.key)),
            tracking=derived_uid(self.pseudo.message_id("sr-tracking", message_id)),
            device=derived_uid(self.pseudo.message_id("sr-device", self.node)),
        )
        finding = Finding(model=m.name, version=m.version, sha256=m.onnx.sha256, clinical=m.clinical,
                          backend=str(payload["model"].get("backend", "")),
                          precision=str(payload["model"].get("precision", "")),
                          scores={k: float(v) for k, v in payload["scores"].items()}, node=self.node)
        data = encode(build(source, finding, uids, datetime.now()))
        return SrJob(uids.instance, m.name, item.key, item.group or "", data)
