"""Exports of the on-device results archive, for double-blind validation studies.

Rows carry only pseudonyms: the site joins them back to its PACS with the site key, on site,
after the ground truth has been read blind (``edged pseudonym --study UID`` computes the
pseudonym of a Study Instance UID the site already knows). Each row says how the result was
made — model, version, sha256, backend, precision, device — and its timings, so a validation
can tell an FP16 engine's results from the FP32 reference's. Rows archived by a version before
those columns existed export them empty.

Formats: CSV (one column per label; booleans as ``true``/``false``, as in the JSON payloads)
and JSON lines (the same fields, ``scores`` and ``timings_ms`` as objects).
"""

from __future__ import annotations

import csv
import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

COLUMNS = ("message_id", "model", "model_version", "model_sha256", "backend", "precision", "device", "clinical",
           "study", "instance", "created_at")
TIMINGS = ("queue", "decode", "preprocess", "inference", "batch_size", "total", "energy_mj")


class ArchiveMissing(FileNotFoundError):
    """No results database where the config says the daemon keeps it."""


def _connect(db_path: Path) -> sqlite3.Connection:
    if not db_path.is_file():
        raise ArchiveMissing(f"no results archive at {db_path}: has the daemon run with this state_dir? "
                             "(-c names the daemon's config file)")
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)  # read-only: never migrates or locks it
    conn.row_factory = sqlite3.Row
    return conn


def archived_models(db_path: Path) -> list[str]:
    conn = _connect(db_path)
    try:
        return [r[0] for r in conn.execute("SELECT DISTINCT model FROM results ORDER BY model")]
    finally:
        conn.close()


def read_results(db_path: Path, model: str | None = None, since: datetime | None = None,
                 until: datetime | None = None) -> list[dict]:
    """Archived results, oldest first; ``since`` inclusive, ``until`` exclusive (timezone-aware)."""
    where, params = [], []
    if model:
        where.append("model = ?")
        params.append(model)
    if since is not None:
        where.append("created_at >= ?")
        params.append(since.timestamp())
    if until is not None:
        where.append("created_at < ?")
        params.append(until.timestamp())
    query = "SELECT * FROM results" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created_at"
    conn = _connect(db_path)
    try:
        rows = conn.execute(query, params).fetchall()
    finally:
        conn.close()
    records = []
    for r in rows:
        keys = set(r.keys())  # an archive written by an earlier version lacks the newer columns
        rec: dict = {k: (r[k] if k in keys else None) for k in COLUMNS}
        rec["clinical"] = bool(rec["clinical"])
        rec["created_at"] = datetime.fromtimestamp(r["created_at"], timezone.utc).isoformat(timespec="seconds")
        rec["scores"] = json.loads(r["scores"])
        timings = r["timings"] if "timings" in keys else None
        rec["timings_ms"] = json.loads(timings) if timings else None
        records.append(rec)
    return records


def write_jsonl(records: list[dict], out: TextIO) -> None:
    for rec in records:
        out.write(json.dumps(rec, sort_keys=True) + "\n")


def write_csv(records: list[dict], out: TextIO) -> None:
    labels = sorted({label for rec in records for label in rec["scores"]})
    timing_columns = [f"{t}_ms" if t not in ("batch_size", "energy_mj") else t for t in TIMINGS]
    writer = csv.writer(out)
    writer.writerow([*COLUMNS, *timing_columns, *labels])
    for rec in records:
        timings = rec["timings_ms"] or {}
        writer.writerow([_cell(rec[k]) for k in COLUMNS] + [_cell(timings.get(t)) for t in TIMINGS]
                        + [_cell(rec["scores"].get(label)) for label in labels])


def _cell(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value
