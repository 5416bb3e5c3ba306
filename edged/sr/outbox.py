"""The SR outbox: DICOM SR results waiting for the PACS, in the same SQLite file as everything else.

A row is inserted in the transaction that commits the result it reports (:meth:`Outbox.add_messages`
with a :class:`SrJob`), so a result and its SR exist together or not at all. The row holds the
whole SR file, patient identity included: it stays on the device and is cleared (the blob set to
NULL) as soon as the PACS has answered success or delivery is given up. The SR's SOP Instance
UID is unique here, so processing the same image again never queues a second, different SR.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from edged.outbox.db import Database


@dataclass(frozen=True)
class SrJob:
    sop_uid: str
    model: str
    instance: str
    study: str
    dataset: bytes


@dataclass(frozen=True)
class SrRow:
    id: int
    model: str
    instance: str
    study: str
    dataset: bytes
    created_at: float
    attempts: int


def insert(conn: sqlite3.Connection, job: SrJob, now: float) -> None:
    """Inside the caller's transaction (the one committing the result)."""
    conn.execute("INSERT OR IGNORE INTO sr_outbox(sop_uid, model, instance, study, dataset, created_at, next_at)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?)", (job.sop_uid, job.model, job.instance, job.study, job.dataset,
                                                   now, now))


class SrOutbox:
    def __init__(self, db: Database):
        self.db = db  # the table is created with the others (edged.outbox.db.SCHEMA)

    def due(self, limit: int = 16, now: float | None = None) -> list[SrRow]:
        rows = self.db.connect().execute(
            "SELECT id, model, instance, study, dataset, created_at, attempts FROM sr_outbox WHERE delivered_at IS"
            " NULL AND failed_at IS NULL AND next_at <= ? ORDER BY next_at, id LIMIT ?",
            (time.time() if now is None else now, limit)).fetchall()
        return [SrRow(**dict(r)) for r in rows]

    def next_due(self) -> float | None:
        row = self.db.connect().execute("SELECT MIN(next_at) FROM sr_outbox WHERE delivered_at IS NULL AND"
                                        " failed_at IS NULL").fetchone()
        return row[0]

    def delivered(self, row_id: int) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE sr_outbox SET delivered_at=?, dataset=NULL, attempts=attempts+1, last_error=NULL"
                         " WHERE id=?", (time.time(), row_id))

    def retry(self, row_id: int, at: float, error: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE sr_outbox SET attempts=attempts+1, next_at=?, last_error=? WHERE id=?",
                         (at, error[:200], row_id))

    def failed(self, row_id: int, error: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE sr_outbox SET failed_at=?, dataset=NULL, attempts=attempts+1, last_error=?"
                         " WHERE id=?", (time.time(), error[:200], row_id))

    def counts(self) -> dict[str, int]:
        row = self.db.connect().execute(
            "SELECT SUM(delivered_at IS NULL AND failed_at IS NULL), SUM(delivered_at IS NOT NULL),"
            " SUM(failed_at IS NOT NULL) FROM sr_outbox").fetchone()
        return {"pending": row[0] or 0, "delivered": row[1] or 0, "failed": row[2] or 0}

    def purge(self, older_than_s: float) -> int:
        cur = self.db.connect().execute(
            "DELETE FROM sr_outbox WHERE (delivered_at IS NOT NULL AND delivered_at < ?) OR"
            " (failed_at IS NOT NULL AND failed_at < ?)", (time.time() - older_than_s,) * 2)
        return cur.rowcount
