"""The JSON Schemas of the MQTT API, and their self-contained bundles for consumers.

``edged/schemas/<kind>.schema.json`` reference each other by URN (the event schema uses the
result schema's ``source``: ``urn:edged:schema:result:v1#/$defs/source``). A consumer's plain
``jsonschema.validate(payload, schema)`` cannot resolve a URN it was never given, so
``edged/schemas/bundle/<kind>.schema.json`` is each schema as a JSON Schema 2020-12 compound
document: the schemas it references (transitively) embedded under ``$defs`` with their own
``$id``, which every 2020-12 validator resolves without a registry. The bundles are generated
(:func:`write_bundles`, ``python tools/bundle_schemas.py``) and a test keeps them equal to the
sources.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
BUNDLES = SCHEMAS / "bundle"
KINDS = ("result", "event", "status", "telemetry", "detections", "camera_state")
_REF = re.compile(r'"\$ref":\s*"(urn:edged:schema:[a-z_]+:v[0-9]+)#')


def load(kind: str) -> dict:
    return json.loads((SCHEMAS / f"{kind}.schema.json").read_text())


def bundle(kind: str) -> dict:
    """``kind``'s schema with every schema it references embedded (a compound schema document)."""
    by_id = {s["$id"]: s for s in (load(k) for k in KINDS)}
    root = copy.deepcopy(load(kind))
    todo, embedded = set(_REF.findall(json.dumps(root))) - {root["$id"]}, {}
    while todo:
        uri = todo.pop()
        resource = copy.deepcopy(by_id[uri])
        resource.pop("$schema", None)
        embedded[uri] = resource
        todo |= set(_REF.findall(json.dumps(resource))) - {root["$id"]} - set(embedded)
    if embedded:
        root.setdefault("$defs", {}).update(dict(sorted(embedded.items())))
    return root


def write_bundles(directory: Path = BUNDLES) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for kind in KINDS:
        path = directory / f"{kind}.schema.json"
        path.write_text(json.dumps(bundle(kind), indent=2, ensure_ascii=False) + "\n")
        out.append(path)
    return out
