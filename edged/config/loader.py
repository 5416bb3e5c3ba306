"""Loading the config file: ``load_config(path, sets)`` returns a validated :class:`Config` or
raises :class:`ConfigError` listing every problem as ``file:line: key: message``."""

from __future__ import annotations

from pathlib import Path

import yaml

from edged.config.schema import Config
from edged.config.yamlsrc import ConfigError, Loc, YamlSource, load_yaml_file, validate

__all__ = ["Config", "ConfigError", "load_config", "parse_set"]


def parse_set(item: str) -> tuple[Loc, object]:
    """``dicom.port=11113`` → (("dicom", "port"), 11113); the value is a YAML scalar/flow value."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError([f"--set {item}: expected KEY=VALUE with a dotted key"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError([f"--set {key}: value is not valid YAML"]) from None
    loc: Loc = tuple(int(p) if p.isdigit() else p for p in key.strip().split("."))
    return loc, value


def _apply(data: dict, loc: Loc, value: object) -> None:
    node = data
    for i, part in enumerate(loc[:-1]):
        nxt = node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None
        if isinstance(node, dict):
            nxt = node.setdefault(part, {})
        if not isinstance(nxt, (dict, list)):
            raise ConfigError([f"--set {'.'.join(map(str, loc))}: {'.'.join(map(str, loc[: i + 1]))} is not a mapping"])
        node = nxt
    if isinstance(node, list):
        if not isinstance(loc[-1], int) or loc[-1] >= len(node):
            raise ConfigError([f"--set {'.'.join(map(str, loc))}: no such list item"])
    node[loc[-1]] = value  # type: ignore[index]


def load_config(path: str | Path | None = None, sets: list[str] | None = None) -> Config:
    """Load, apply ``--set`` overrides, validate. No path: defaults (the reference model)."""
    src = load_yaml_file(path) if path else YamlSource(data={})
    if not isinstance(src.data, dict):
        raise ConfigError([f"{src.name}:1: (top level): expected a mapping of keys"])
    origins: dict[Loc, str] = {}
    for item in sets or []:
        loc, value = parse_set(item)
        _apply(src.data, loc, value)
        origins[loc] = f"--set {'.'.join(map(str, loc))}"
    return validate(Config, src, origins)
