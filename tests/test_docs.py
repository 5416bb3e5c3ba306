"""The documents people copy from must stay true: the example config validates, and every
example payload in docs/mqtt-api.md validates against the JSON Schemas the daemon is tested with."""

from __future__ import annotations

import json
import re

import pytest

from edged.config.check import check
from edged.config.loader import load_config
from helpers import REPO, schema_validator

API = REPO / "docs" / "mqtt-api.md"


def test_example_config_validates(tmp_path):
    # its credential and CA files exist only on a device: point them at stand-ins
    stand_in = tmp_path / "file"
    stand_in.write_text("x\n")
    cfg = load_config(REPO / "docs" / "examples" / "edged.yaml",
                      [f"mqtt.{k}={stand_in}" for k in ("username_file", "password_file", "tls.ca_file")])
    assert cfg.node_id == "er-west-cr1" and cfg.models[0].backend == "auto"
    assert cfg.dicom.allowed_calling_aes == ["CR_ROOM_1", "CR_ROOM_2", "PACS_ROUTER"]


def examples() -> list[tuple[str, dict]]:
    blocks = re.findall(r"```json\n(.*?)\n```", API.read_text(), re.S)
    return [(json.loads(b)["schema"].split(".")[1].split("/")[0], json.loads(b)) for b in blocks]


@pytest.mark.parametrize("kind,payload", examples(), ids=lambda v: v if isinstance(v, str) else "")
def test_documented_payloads_match_the_schemas(kind, payload):
    schema_validator(kind).validate(payload)


def test_every_kind_of_message_is_documented():
    assert {kind for kind, _ in examples()} == {"result", "event", "status", "telemetry", "detections",
                                                "camera_state"}
    events = {(p["type"], p["reason"]) for kind, p in examples() if kind == "event"}
    assert {("camera", "stalled"), ("camera", "reconnected"), ("object", "new")} <= events


def test_schema_bundles_are_current_and_work_with_plain_jsonschema():
    """What docs/mqtt-api.md tells consumers: the bundles validate with jsonschema.validate alone."""
    import jsonschema

    from edged.mqtt.schemas import BUNDLES, KINDS, bundle

    for kind in KINDS:
        on_disk = json.loads((BUNDLES / f"{kind}.schema.json").read_text())
        assert on_disk == bundle(kind), f"run python tools/bundle_schemas.py ({kind} bundle is stale)"
    cross_ref_checked = False
    for kind, payload in examples():
        schema = json.loads((BUNDLES / f"{kind}.schema.json").read_text())
        jsonschema.validate(payload, schema, format_checker=jsonschema.FormatChecker())  # no registry
        if kind == "event" and "source" in payload:  # the cross-schema $ref is resolved, not skipped
            with pytest.raises(jsonschema.ValidationError, match="PatientName"):
                jsonschema.validate(dict(payload, source={**payload["source"], "PatientName": "DOE^JANE"}), schema)
            cross_ref_checked = True
    assert cross_ref_checked


def test_the_readme_secondary_classifier_example_loads_and_checks(tmp_path):
    """The README's detect → crop → classify example is a configuration `edged check` accepts
    against the repository's own models (centerface, cropcls)."""
    block = next(b for b in re.findall(r"```yaml\n(.*?)\n```", (REPO / "README.md").read_text(), re.S)
                 if "secondary:" in b)
    path = tmp_path / "edged.yaml"
    path.write_text(block + f"\nstate_dir: {tmp_path / 'state'}\nmodel_repository: {REPO / 'engines'}\n")
    cfg = load_config(path)
    (cam,) = cfg.cameras
    secondary = cam.models[0].secondary[0]
    assert (secondary.model, secondary.labels, secondary.crop) == ("cropcls", ("face",), "square")
    assert check(cfg).errors == []
