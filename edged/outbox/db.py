"""SQLite state: the instance ledger, the outbox and the results archive in one file.

One file means one transaction can record a result, queue its MQTT message (and its DICOM SR,
:mod:`edged.sr.outbox`) and mark the instance done, so a crash leaves either all of them or none. WAL with synchronous=FULL: NORMAL
may lose the last commits on power loss, which would break the C-STORE promise.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    instance     TEXT PRIMARY KEY,      -- HMAC pseudonym of the SOP Instance UID
    study        TEXT NOT NULL,         -- HMAC pseudonym of the Study Instance UID
    state        TEXT NOT NULL,         -- spooled | done | skipped | failed
    calling_ae   TEXT NOT NULL,
    received_at  REAL NOT NULL,
    updated_at   REAL NOT NULL,
    reason       TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0  -- processing attempts started (crash-loop guard)
);
CREATE TABLE IF NOT EXISTS outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id   TEXT NOT NULL UNIQUE,
    topic        TEXT NOT NULL,
    payload      BLOB NOT NULL,
    qos          INTEGER NOT NULL DEFAULT 1,
    created_at   REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_sent_at REAL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(id) WHERE delivered_at IS NULL;
CREATE TABLE IF NOT EXISTS results (
    message_id    TEXT PRIMARY KEY,
    model         TEXT NOT NULL,
    model_version TEXT NOT NULL,
    model_sha256  TEXT NOT NULL,
    clinical      INTEGER NOT NULL,
    study         TEXT NOT NULL,
    instance      TEXT NOT NULL,
    scores        TEXT NOT NULL,        -- JSON {label: score}
    created_at    REAL NOT NULL,
    backend       TEXT,                 -- onnxruntime | tensorrt (NULL: archived by an earlier version)
    precision     TEXT,
    device        TEXT,
    timings       TEXT                  -- JSON: the result's timings_ms
);
CREATE INDEX IF NOT EXISTS results_model ON results(model, created_at);
-- DICOM SR results waiting for the PACS (edged.sr.outbox); dataset holds PHI, on-device only
CREATE TABLE IF NOT EXISTS sr_outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_uid      TEXT NOT NULL UNIQUE,  -- the SR's own SOP Instance UID (on-device only)
    model        TEXT NOT NULL,
    instance     TEXT NOT NULL,         -- pseudonym of the source image (for events)
    study        TEXT NOT NULL,         -- pseudonym of its study
    dataset      BLOB,                  -- the SR file; NULL once delivered or given up
    created_at   REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      REAL NOT NULL,
    delivered_at REAL,
    failed_at    REAL,
    last_error   TEXT                   -- a status code or a reason, never PHI
);
CREATE INDEX IF NOT EXISTS sr_pending ON sr_outbox(next_at) WHERE delivered_at IS NULL AND failed_at IS NULL;
"""


# Columns added since the first release: (table, column, definition). A database written by an
# earlier version gets them at open; its old rows keep the default (NULL: not recorded then).
ADDED_COLUMNS = (
    ("instances", "attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("results", "backend", "TEXT"),
    ("results", "precision", "TEXT"),
    ("results", "device", "TEXT"),
    ("results", "timings", "TEXT"),
)


def migrate(conn: sqlite3.Connection) -> None:
    for table, column, definition in ADDED_COLUMNS:
        if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")


class Database:
    """Per-thread connections to one SQLite file (sqlite3 connections are not shareable).

    ``synchronous="NORMAL"`` is only for bookkeeping whose loss is harmless: the publisher's
    sent/delivered marks (a lost mark means one more re-send with the same message_id).
    """

    def __init__(self, path: Path, synchronous: str = "FULL"):
        self.path = path
        self.synchronous = synchronous
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        conn = self.connect()
        conn.executescript(SCHEMA)
        migrate(conn)

    def connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def transaction(self) -> "_Tx":
        return _Tx(self.connect())


class _Tx:
    """``with db.transaction() as conn:`` — BEGIN IMMEDIATE … COMMIT, ROLLBACK on error."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
