"""Invalid config fails fast with file, line and key; --set overrides; export-results."""

from __future__ import annotations

import csv
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edged.config.loader import ConfigError, load_config
from helpers import REPO


def edged(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=60)


def test_check_lists_every_error_with_line_and_key(tmp_path: Path):
    bad = tmp_path / "edged.yaml"
    bad.write_text(textwrap.dedent("""\
        node_id: ward-3
        dicom:
          port: 99999
          ae_titel: EDGED
          allowed_hosts: [10.0.0.0/33]
        mqtt:
          topic_prefix: "edged//v1"
        models:
          - name: chexnet
            backend: cuda
        """))
    run = edged("check", "-c", str(bad))
    assert run.returncode == 2
    err = run.stderr
    assert f"{bad}:3: dicom.port:" in err
    assert f"{bad}:4: dicom.ae_titel: unknown key" in err
    assert f"{bad}:5: dicom.allowed_hosts:" in err
    assert f"{bad}:7: mqtt.topic_prefix:" in err
    assert f"{bad}:10: models[0].backend:" in err


def test_yaml_syntax_error_names_the_line(tmp_path: Path):
    bad = tmp_path / "edged.yaml"
    bad.write_text("node_id: a\ndicom:\n  port: [11112\n")
    run = edged("run", "-c", str(bad))
    assert run.returncode == 2 and f"{bad}:" in run.stderr and "YAML syntax" in run.stderr


def test_set_overrides_and_their_errors(tmp_path: Path):
    cfg = load_config(None, ["dicom.port=11113", "mqtt.host=gateway.local", "node_id=er-1"])
    assert (cfg.dicom.port, cfg.mqtt.host, cfg.node_id) == (11113, "gateway.local", "er-1")
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["dicom.port=http"])
    assert exc.value.problems[0].startswith("--set dicom.port: dicom.port:")
    run = edged("check", "--set", "dicom.bogus=1")
    assert run.returncode == 2 and "--set dicom.bogus: dicom.bogus: unknown key" in run.stderr


def test_check_accepts_defaults_and_validates_manifests(tmp_path: Path):
    assert edged("check").returncode == 0
    repo = tmp_path / "engines"
    (repo / "broken").mkdir(parents=True)
    (repo / "broken" / "model.yaml").write_text("name: broken\nversion: 1\nclinical: maybe\n")
    run = edged("check", "--set", f"model_repository={repo}", "--set", "models=[{name: broken}]")
    assert run.returncode == 2
    assert f"{repo}/broken/model.yaml:3: clinical:" in run.stderr
    assert f"{repo}/broken/model.yaml:1: onnx: Field required" in run.stderr


def test_export_results_writes_pseudonymized_csv(daemon_factory, collector, tmp_path):
    from helpers import cr_variants, storescu

    d = daemon_factory().start()
    assert storescu(d.port, *cr_variants(tmp_path, 2)).returncode == 0
    collector.wait_for(lambda c: len(c.results()) == 2)
    assert d.terminate() == 0
    out = tmp_path / "export.csv"
    run = edged("export-results", "-c", str(d.config), "-o", str(out))
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2
    assert {r["message_id"] for r in rows} == {r["message_id"] for r in collector.results()}
    assert all(len(r["instance"]) == 32 and float(r["Cardiomegaly"]) >= 0 for r in rows)
    key = tmp_path / "state" / "site.key"
    assert key.stat().st_mode & 0o777 == 0o600


def test_duplicate_keys_nested_sets_and_missing_files_are_config_errors(tmp_path: Path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("node_id: a\ndicom:\n  port: 11112\n  port: 11113\n")
    run = edged("check", "-c", str(dup))
    assert run.returncode == 2 and f"{dup}:4: dicom.port: duplicate key" in run.stderr
    run = edged("check", "--set", "dicom={port: 99999}", "--set", "models=[{name: chexnet, bakend: x}]")
    assert "--set dicom: dicom.port:" in run.stderr
    assert "--set models: models[0].bakend: unknown key (did you mean backend?)" in run.stderr
    cfg = tmp_path / "edged.yaml"
    cfg.write_text("mqtt:\n  username_file: /nonexistent/user\n  password_file: /nonexistent/pass\n")
    run = edged("check", "-c", str(cfg))  # found before any model is loaded, with line and key
    assert run.returncode == 2
    assert f"{cfg}:2: mqtt.username_file: /nonexistent/user: no such file" in run.stderr
