"""export-results and pseudonym: what a validation study needs from the archive, and an old archive."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys

from pydicom import dcmread

from edged.outbox.db import Database
from helpers import REPO, cr_variants, storescu, write_config


def edged(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120, input=stdin)


def test_export_columns_filters_warnings_and_the_pseudonym_join(daemon_factory, collector, tmp_path):
    d = daemon_factory().start()
    files = cr_variants(tmp_path, 2)
    assert storescu(d.port, *files).returncode == 0
    collector.wait_for(lambda c: len(c.results()) == 2)
    assert d.terminate() == 0
    cfg = str(d.config)

    run = edged("export-results", "-c", cfg)
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(io.StringIO(run.stdout)))
    assert len(rows) == 2 and "exported 2 result(s)" in run.stderr
    results = {r["message_id"]: r for r in collector.results()}
    for row in rows:
        published = results[row["message_id"]]
        assert row["clinical"] == "false"  # as in the JSON payload, not Python's False
        assert (row["model"], row["backend"], row["precision"], row["device"]) == \
            ("chexnet-tiny", "onnxruntime", "fp32", "cpu")
        assert float(row["inference_ms"]) == published["timings_ms"]["inference"]
        assert float(row["total_ms"]) == published["timings_ms"]["total"]
        assert int(row["batch_size"]) == published["timings_ms"]["batch_size"]
        assert float(row["Cardiomegaly"]) == published["scores"]["Cardiomegaly"]

    lines = edged("export-results", "-c", cfg, "--format", "jsonl").stdout.splitlines()
    rec = json.loads(lines[0])
    assert rec["clinical"] is False and rec["backend"] == "onnxruntime" and rec["timings_ms"]["batch_size"] >= 1

    created = [r["created_at"] for r in rows]  # ISO, UTC, seconds
    assert len(edged("export-results", "-c", cfg, "--since", "2999-01-01").stdout.splitlines()) == 1  # header only
    assert len(edged("export-results", "-c", cfg, "--until", "2000-01-01T00:00Z").stdout.splitlines()) == 1
    assert len(edged("export-results", "-c", cfg, "--since", "2000-01-01", "--until", "2999-01-01T00:00+01:00")
               .stdout.splitlines()) == 3, created
    bad = edged("export-results", "-c", cfg, "--since", "yesterday")
    assert bad.returncode == 2 and "expected a date or date-time like 2025-01-31" in bad.stderr

    unknown = edged("export-results", "-c", cfg, "--model", "chexnet-tyni")
    assert unknown.returncode == 0 and len(unknown.stdout.splitlines()) == 1
    assert "warning: no results of model chexnet-tyni in the archive (did you mean chexnet-tiny?); it has: " \
           "chexnet-tiny" in unknown.stderr

    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    run = edged("pseudonym", "-c", cfg, "--study", study_uid)
    assert run.returncode == 0 and run.stdout.strip() == rows[0]["study"] == collector.results()[0]["study"]
    run = edged("pseudonym", "-c", cfg, "--from", "-", stdin=f"{study_uid}\n\n1.2.3\n")
    assert run.stdout.splitlines()[0] == f"{study_uid}\t{rows[0]['study']}" and len(run.stdout.splitlines()) == 2


def test_without_an_archive_or_key_the_answer_is_one_line(tmp_path):
    cfg = write_config(tmp_path / "edged.yaml", state_dir=str(tmp_path / "nothing-here"))
    run = edged("export-results", "-c", str(cfg))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"error: no results archive at {tmp_path / 'nothing-here' / 'edged.db'}: has the daemon run" in run.stderr
    run = edged("pseudonym", "-c", str(cfg), "--study", "1.2.3")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"{tmp_path / 'nothing-here' / 'site.key'}: no site key" in run.stderr
    assert not (tmp_path / "nothing-here" / "site.key").exists()  # never created: it would match nothing


def test_an_archive_from_before_the_new_columns_is_migrated_and_exported(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    db = state / "edged.db"
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE instances (instance TEXT PRIMARY KEY, study TEXT NOT NULL, state TEXT NOT NULL,
            calling_ae TEXT NOT NULL, received_at REAL NOT NULL, updated_at REAL NOT NULL, reason TEXT);
        CREATE TABLE results (message_id TEXT PRIMARY KEY, model TEXT NOT NULL, model_version TEXT NOT NULL,
            model_sha256 TEXT NOT NULL, clinical INTEGER NOT NULL, study TEXT NOT NULL, instance TEXT NOT NULL,
            scores TEXT NOT NULL, created_at REAL NOT NULL);
        INSERT INTO results VALUES ('m1', 'chexnet', '0.1', 'abc', 0, 's1', 'i1', '{"Mass": 0.5}', 1700000000);
        """)
    conn.commit()
    conn.close()
    cfg = write_config(tmp_path / "edged.yaml", state_dir=str(state))
    run = edged("export-results", "-c", str(cfg))  # read-only: before any migration
    assert run.returncode == 0, run.stderr
    (row,) = csv.DictReader(io.StringIO(run.stdout))
    assert row["backend"] == "" and row["inference_ms"] == "" and row["Mass"] == "0.5" and row["clinical"] == "false"
    Database(db)  # what the daemon does at start
    columns = {r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(results)")}
    assert {"backend", "precision", "device", "timings"} <= columns
    assert "attempts" in {r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(instances)")}
    assert edged("export-results", "-c", str(cfg)).returncode == 0
