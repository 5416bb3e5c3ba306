"""Exports of the on-device results archive, for double-blind validation studies.

Rows carry only pseudonyms: the site joins them back to its PACS with the site key, on site,
after the ground truth has been read blind.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

COLUMNS = ("message_id", "model", "model_version", "model_sha256", "clinical", "study", "instance", "created_at")


def export_results(db_path: Path, out: TextIO, fmt: str = "csv", model: str | None = None) -> int:
    if not db_path.exists():
        raise FileNotFoundError(f"{db_path}: no results archive (has the daemon run with this state_dir?)")
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    query = "SELECT * FROM results" + (" WHERE model=?" if model else "") + " ORDER BY created_at"
    rows = conn.execute(query, (model,) if model else ()).fetchall()
    conn.close()
    records = []
    for r in rows:
        rec = {k: r[k] for k in COLUMNS}
        rec["clinical"] = bool(rec["clinical"])
        rec["created_at"] = datetime.fromtimestamp(r["created_at"], timezone.utc).isoformat(timespec="seconds")
        rec["scores"] = json.loads(r["scores"])
        records.append(rec)
    if fmt == "jsonl":
        for rec in records:
            out.write(json.dumps(rec, sort_keys=True) + "\n")
        return len(records)
    labels = sorted({label for rec in records for label in rec["scores"]})
    writer = csv.writer(out)
    writer.writerow([*COLUMNS, *labels])
    for rec in records:
        writer.writerow([rec[k] for k in COLUMNS] + [rec["scores"].get(label, "") for label in labels])
    return len(records)
