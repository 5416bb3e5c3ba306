"""Loading the config file: ``load_config(path, sets)`` returns a validated :class:`Config` or
raises :class:`ConfigError` listing every problem as ``file:line: key: message``.

Order of precedence, lowest first: the file (e.g. ``/etc/edged/edged.yaml``, shared by every
device flashed from one image), its drop-ins (``edged.d/*.yaml`` beside it, in name order: what a
device or a site changes without editing the image's file), then ``--set``. Mappings merge key by
key; any other value (a list, a scalar) replaces the earlier one. An error names the file and
line the failing value came from. A ``node_id`` placeholder (:mod:`edged.config.identity`) is
replaced by the device's own id before validation.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from edged.config.identity import derive_node_id, is_placeholder
from edged.config.schema import Config
from edged.config.yamlsrc import ConfigError, Loc, YamlSource, load_yaml_file, validate

__all__ = ["Config", "ConfigError", "dropin_files", "load_config", "load_config_notes", "parse_set"]


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


def dropin_files(path: str | Path) -> list[Path]:
    """``edged.d/*.yaml`` beside ``edged.yaml``, in name order (``10-site.yaml`` before ``20-device.yaml``)."""
    folder = Path(path).with_suffix(".d")
    return sorted(p for p in folder.glob("*.yaml") if p.is_file()) if folder.is_dir() else []


def _forget(origins: dict[Loc, str], loc: Loc) -> None:
    for key in [k for k in origins if k[: len(loc)] == loc]:
        del origins[key]


def _merge(base: dict, over: dict, loc: Loc, src: YamlSource, origins: dict[Loc, str]) -> None:
    """Merge drop-in ``src`` (at ``loc``) into ``base``; record file:line for every value it sets."""
    for key, value in over.items():
        here = loc + (key,)
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, here, src, origins)
            continue
        base[key] = value
        _forget(origins, here)
        origins.update({sub: f"{src.name}:{line}" for sub, line in src.lines.items() if sub[: len(here)] == here})


def load_config_notes(path: str | Path | None = None, sets: list[str] | None = None,
                      root: Path | None = None) -> tuple[Config, list[str]]:
    """Like :func:`load_config`, plus notes for ``edged check`` (e.g. which id a placeholder
    gave). ``root``: the device's root filesystem (an image being prepared), default ``/``."""
    src = load_yaml_file(path) if path else YamlSource(data={})
    if not isinstance(src.data, dict):
        raise ConfigError([f"{src.name}:1: (top level): expected a mapping of keys"])
    origins: dict[Loc, str] = {}
    for dropin in dropin_files(path) if path else []:
        extra = load_yaml_file(dropin)
        if not isinstance(extra.data, dict):
            raise ConfigError([f"{extra.name}:1: (top level): expected a mapping of keys"])
        _merge(src.data, extra.data, (), extra, origins)
    for item in sets or []:
        loc, value = parse_set(item)
        _apply(src.data, loc, value)
        _forget(origins, loc)
        origins[loc] = f"--set {'.'.join(map(str, loc))}"
    notes = _resolve_node_id(src, origins, root or Path("/"))
    cfg = validate(Config, src, origins)
    cfg.set_origin(lambda loc: origins.get(loc) or (f"{src.name}:{src.line_of(loc)}" if src.line_of(loc) else src.name))
    return cfg, notes


def _resolve_node_id(src: YamlSource, origins: dict[Loc, str], root: Path) -> list[str]:
    placeholder = src.data.get("node_id")
    if not is_placeholder(placeholder):
        return []
    line = src.line_of(("node_id",))
    where = origins.get(("node_id",)) or (f"{src.name}:{line}" if line else src.name)
    node_id, source = derive_node_id(placeholder, root)
    live = root.resolve() == Path("/")
    if node_id is not None:
        src.data["node_id"] = node_id
        note = f"{where}: node_id: {placeholder!r} is the image placeholder; this device is {node_id!r} (from {source})"
        if not live:
            note += (f"; but that comes from the image ({root}), so every device flashed from it shares it: "
                     "empty etc/machine-id (truncate -s0) and each device generates its own at first boot")
        return [note]
    if live:
        raise ConfigError([f"{where}: node_id: {placeholder!r} needs a device identity, but /etc/machine-id "
                           "is empty and the host name is unusable: set node_id, or let systemd generate "
                           "the machine id (systemd-machine-id-setup)"])
    src.data["node_id"] = "node-first-boot"  # an image: each device derives its own when it boots
    return [f"{where}: node_id: {placeholder!r} is the image placeholder; each device derives its own "
            f"at first boot from {source}"]


def load_config(path: str | Path | None = None, sets: list[str] | None = None, root: Path | None = None) -> Config:
    """Load the file and its drop-ins, apply ``--set`` overrides, validate. No path: defaults
    (the reference model)."""
    return load_config_notes(path, sets, root)[0]
