"""Outbox operations: what the ingest side commits and what the publisher drains.

Writers (the C-STORE handler, the result writer) only ever INSERT/UPDATE inside one
transaction per image or per group of results. The single publisher thread reads undelivered rows, publishes them
and marks a row delivered only on a successful PUBACK; rows whose PUBACK never came are sent
again after ``resend_after`` seconds with the same ``message_id`` (at-least-once).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass

from edged.outbox.db import Database
from edged.sr.outbox import SrJob
from edged.sr.outbox import insert as insert_sr


def encode(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class OutboxRow:
    id: int
    message_id: str
    topic: str
    payload: bytes
    qos: int
    attempts: int


Ledger = tuple[str, str, str, str, "str | None"]  # (instance, study, state, calling_ae, reason)


@dataclass(frozen=True)
class ArchiveRow:
    """Pseudonym → result, kept on the device for double-blind validation exports."""

    model: str
    model_version: str
    model_sha256: str
    clinical: bool
    study: str
    instance: str
    scores: dict[str, float]
    backend: str | None = None  # how the result was made, for validation exports
    precision: str | None = None
    device: str | None = None
    timings: dict[str, float | int] | None = None  # the result's timings_ms


@dataclass(frozen=True)
class Record:
    """One message to queue, with the ledger change, archive row and DICOM SR that go with it."""

    topic: str
    payload: dict
    ledger: Ledger | None = None
    archive: ArchiveRow | None = None
    sr: SrJob | None = None


class Outbox:
    def __init__(self, db: Database):
        self.db = db

    # -- ledger (ingest side) -------------------------------------------------------------
    def instance(self, instance: str) -> tuple[str | None, str | None]:
        """``(state, calling_ae)`` of an instance, ``(None, None)`` when it was never seen."""
        row = self.db.connect().execute(
            "SELECT state, calling_ae FROM instances WHERE instance=?", (instance,)
        ).fetchone()
        return (row["state"], row["calling_ae"]) if row else (None, None)

    def mark_spooled(self, instance: str, study: str, calling_ae: str) -> None:
        now = time.time()
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO instances(instance, study, state, calling_ae, received_at, updated_at)"
                " VALUES (?, ?, 'spooled', ?, ?, ?) ON CONFLICT(instance) DO UPDATE SET state='spooled',"
                " calling_ae=excluded.calling_ae, received_at=excluded.received_at,"
                " updated_at=excluded.updated_at, reason=NULL, attempts=0"
                " WHERE state NOT IN ('done', 'skipped')",  # a late twin never reopens a finished instance
                (instance, study, calling_ae, now, now),
            )

    def begin_attempt(self, instance: str) -> int:
        """Count a processing attempt before it starts; returns its number (1 for the first)."""
        now = time.time()
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO instances(instance, study, state, calling_ae, received_at, updated_at, attempts)"
                " VALUES (?, '', 'spooled', 'unknown', ?, ?, 1) ON CONFLICT(instance) DO UPDATE SET"
                " attempts=attempts+1, updated_at=excluded.updated_at", (instance, now, now))
            row = conn.execute("SELECT attempts FROM instances WHERE instance=?", (instance,)).fetchone()
        return int(row[0])

    def undo_attempt(self, instance: str) -> None:
        """An attempt that was interrupted (the daemon stopping) does not count."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE instances SET attempts=MAX(attempts-1, 0) WHERE instance=?", (instance,))

    def add_message(
        self,
        topic: str,
        payload: dict,
        *,
        ledger: Ledger | None = None,
        archive: ArchiveRow | None = None,
    ) -> bool:
        """Queue one message; optionally set the ledger and archive a result in the same
        transaction. False if a message with this id was queued before."""
        return self.add_messages([Record(topic, payload, ledger, archive)])[0]

    def add_messages(self, records: list["Record"]) -> list[bool]:
        """Commit several records in one transaction (one fsync for a whole batch of results)."""
        now = time.time()
        inserted = []
        with self.db.transaction() as conn:
            for rec in records:
                new = _insert(conn, rec.topic, rec.payload, now)
                inserted.append(new)
                if rec.ledger is not None:
                    conn.execute(
                        "INSERT INTO instances(instance, study, state, calling_ae, received_at, updated_at, reason)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(instance) DO UPDATE SET"
                        " state=excluded.state, updated_at=excluded.updated_at, reason=excluded.reason",
                        (*rec.ledger[:4], now, now, rec.ledger[4]),
                    )
                if rec.archive is not None and new:
                    a = rec.archive
                    conn.execute(
                        "INSERT OR IGNORE INTO results(message_id, model, model_version, model_sha256, clinical,"
                        " study, instance, scores, created_at, backend, precision, device, timings)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (rec.payload["message_id"], a.model, a.model_version, a.model_sha256, int(a.clinical),
                         a.study, a.instance, json.dumps(a.scores, sort_keys=True), now, a.backend, a.precision,
                         a.device, json.dumps(a.timings, sort_keys=True) if a.timings is not None else None),
                    )
                if rec.sr is not None:
                    insert_sr(conn, rec.sr, now)
        return inserted

    # -- publisher side ------------------------------------------------------------------
    def due(self, limit: int, resend_before: float, exclude: set[int]) -> list[OutboxRow]:
        """Undelivered rows never sent, or sent before ``resend_before`` without a PUBACK."""
        rows = self.db.connect().execute(
            "SELECT id, message_id, topic, payload, qos, attempts FROM outbox WHERE delivered_at IS NULL"
            " AND (last_sent_at IS NULL OR last_sent_at < ?) ORDER BY id LIMIT ?",
            (resend_before, limit + len(exclude)),
        ).fetchall()
        out = [OutboxRow(**dict(r)) for r in rows if r["id"] not in exclude]
        return out[:limit]

    def mark_sent(self, row_ids: list[int]) -> None:
        if not row_ids:
            return
        now = time.time()
        with self.db.transaction() as conn:
            conn.executemany(
                "UPDATE outbox SET attempts=attempts+1, last_sent_at=? WHERE id=?", [(now, i) for i in row_ids]
            )

    def mark_delivered(self, row_ids: list[int]) -> None:
        if not row_ids:
            return
        now = time.time()
        with self.db.transaction() as conn:
            conn.executemany("UPDATE outbox SET delivered_at=? WHERE id=?", [(now, i) for i in row_ids])

    def reset_unacked(self) -> None:
        """After a reconnect or restart, everything not acknowledged is due again at once."""
        self.db.connect().execute("UPDATE outbox SET last_sent_at=NULL WHERE delivered_at IS NULL")

    def pending_count(self) -> int:
        return self.db.connect().execute("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL").fetchone()[0]

    def purge_delivered(self, older_than_s: float) -> int:
        cur = self.db.connect().execute(
            "DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < ?", (time.time() - older_than_s,)
        )
        return cur.rowcount


def _insert(conn: sqlite3.Connection, topic: str, payload: dict, now: float) -> bool:
    cur = conn.execute(
        "INSERT OR IGNORE INTO outbox(message_id, topic, payload, qos, created_at) VALUES (?, ?, ?, 1, ?)",
        (payload["message_id"], topic, encode(payload), now),
    )
    return cur.rowcount == 1
