"""YAML loading that remembers where every key came from.

Configuration errors must name the file, line and dotted key (a technician fixes the file on
a device over SSH, with no IDE). PyYAML's composer keeps marks on nodes; we walk the node tree
once and record ``path -> line`` next to the plain Python data that pydantic validates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from edged.config.hints import explain

Loc = tuple[str | int, ...]


@dataclass
class YamlSource:
    """Parsed YAML data plus the line (1-based) of each key and list item."""

    data: Any
    name: str = "<defaults>"
    lines: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int | None:
        """Line of the deepest known prefix of ``loc`` (a missing key points at its parent)."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None


class ConfigError(Exception):
    """A configuration file is invalid; ``problems`` lists ``file:line: key: message`` strings."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _construct(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> Any:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node))
            if key in out:
                raise ConfigError([f"{key_node.start_mark.line + 1}: {dotted(loc + (key,))}: duplicate key"])
            lines[loc + (key,)] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, loc + (key,), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, loc + (i,), lines) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def load_yaml_text(text: str, name: str) -> YamlSource:
    """Parse YAML text; syntax errors become a ConfigError with the line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{name}:{mark.line + 1}" if mark else name
        raise ConfigError([f"{where}: YAML syntax: {getattr(exc, 'problem', exc)}"]) from None
    lines: dict[Loc, int] = {}
    try:
        data = {} if node is None else _construct(node, (), lines)
    except ConfigError as exc:
        raise ConfigError([f"{name}:{p}" for p in exc.problems]) from None
    return YamlSource(data=data, name=name, lines=lines)


def load_yaml_file(path: str | Path) -> YamlSource:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    return load_yaml_text(text, str(path))


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validate(model: type[BaseModel], src: YamlSource, overrides: dict[Loc, str] | None = None) -> Any:
    """Validate ``src.data`` against ``model``; every error becomes ``file:line: key: msg``.

    ``overrides`` maps a location that came from the command line to a label such as
    ``--set dicom.port`` so its errors point there instead of at a file line.
    """
    try:
        return model.model_validate(src.data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            key = dotted(loc) or "(top level)"
            # an error inside a value given with --set points at the --set, not at the file
            origin = next((overrides[loc[:end]] for end in range(len(loc), 0, -1)
                           if loc[:end] in (overrides or {})), None)
            if origin is None:
                line = src.line_of(loc)
                origin = f"{src.name}:{line}" if line else src.name
            msg = explain(model, err)
            problems.append(f"{origin}: {key}: {msg}")
        raise ConfigError(problems) from None
