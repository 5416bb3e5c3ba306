"""The one way an event leaves the daemon: built, committed to the outbox, publisher woken.

Every source of events (the DICOM handlers, the pipeline, backends, power changes, cameras)
calls :meth:`EventEmitter.emit`, so every event gets the same node, topic, payload rules and
durability: it is in SQLite before anyone is told, and the publisher delivers it at least once.
:meth:`record` builds the same event as an outbox :class:`Record` for callers that commit it
together with other rows (a ledger change, a group of results) in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edged.mqtt import messages
from edged.outbox.store import Ledger, Outbox, Record

log = logging.getLogger("edged.events")


class EventEmitter:
    def __init__(self, outbox: Outbox, topics: messages.Topics, wake: Callable[[], None] = lambda: None):
        self.outbox, self.topics, self.wake = outbox, topics, wake

    def record(self, type_: str, reason: str, *, message_id: str | None = None, ledger: Ledger | None = None,
               **fields: object) -> Record:
        payload = messages.event(self.topics.node, type_, reason, message_id=message_id, **fields)
        return Record(self.topics.events, payload, ledger)

    def commit(self, records: list[Record]) -> None:
        """Commit records in one transaction, then wake the publisher. Raises what SQLite raises."""
        if records:
            self.outbox.add_messages(records)
            self.wake()

    def emit(self, type_: str, reason: str, *, message_id: str | None = None, ledger: Ledger | None = None,
             **fields: object) -> bool:
        """Queue one event durably. False (and logged) when the outbox refused it — a full disk
        must not turn a refusal already answered into a crash of the caller."""
        try:
            self.commit([self.record(type_, reason, message_id=message_id, ledger=ledger, **fields)])
            return True
        except Exception as exc:
            log.error("could not queue %s/%s event: %s", type_, reason, exc)
            return False
