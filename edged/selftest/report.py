"""The self-test report: rows of (group, target, status, note, data), a terminal table, one JSON file.

Every check of every group — TensorRT here, power from ``edged.power.checks`` — returns rows of
the same shape, so a technician's report reads the same whatever produced it::

    {"group": "tensorrt", "target": "int8 build twice", "status": "PASS" | "FAIL" | "SKIP",
     "note": "one sentence: what was found, or why it failed or was skipped", "data": {...}}

A SKIP always says why (no TensorRT, no DLA, not root, no systemd, no consent to switch modes);
FAIL makes ``edged selftest`` exit 1. The JSON file adds who/where/when (``meta``) and a count.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

STATUSES = ("PASS", "FAIL", "SKIP")
REPORT_SCHEMA = "edged.selftest/v1"


@dataclass
class Row:
    group: str
    target: str
    status: str
    note: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")

    @classmethod
    def of(cls, raw: dict, group: str | None = None) -> "Row":
        """A row from a dict another module produced (the power checks), checked on the way in."""
        return cls(str(raw.get("group") or group or "?"), str(raw["target"]), str(raw["status"]),
                   str(raw.get("note") or ""), dict(raw.get("data") or {}))

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row | list[Row]) -> None:
        self.rows.extend(row if isinstance(row, list) else [row])

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status == "FAIL"]

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.rows) for s in STATUSES}

    def as_dict(self) -> dict:
        return {"schema": REPORT_SCHEMA, "meta": self.meta, "counts": self.counts(), "passed": not self.failed,
                "rows": [r.as_dict() for r in self.rows]}

    def write_json(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=2, default=str))
        os.replace(tmp, path)

    def print_table(self, out: TextIO) -> None:
        width = shutil.get_terminal_size((120, 24)).columns
        gw = max([5] + [len(r.group) for r in self.rows])
        tw = max([5] + [len(r.target) for r in self.rows])
        head = f"{'group':<{gw}}  {'check':<{tw}}  status  "
        note_w = max(30, width - len(head))
        print(f"{head}note", file=out)
        print("-" * min(width, len(head) + note_w), file=out)
        for r in self.rows:
            lines = textwrap.wrap(r.note, note_w) or [""]
            print(f"{r.group:<{gw}}  {r.target:<{tw}}  {r.status:<6}  {lines[0]}", file=out)
            for more in lines[1:]:
                print(f"{'':<{len(head)}}{more}", file=out)
        c = self.counts()
        verdict = "FAILED (" + ", ".join(f"{r.group}/{r.target}" for r in self.failed) + ")" if self.failed else "passed"
        print(f"selftest: {verdict} — {c['PASS']} passed, {c['FAIL']} failed, {c['SKIP']} skipped", file=out)


def meta(**extra: Any) -> dict[str, Any]:
    """Where and when the report was made (host name, kernel, time); PHI-free by construction."""
    u = os.uname()
    return {"host": u.nodename, "kernel": u.release, "machine": u.machine,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
