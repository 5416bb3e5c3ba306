"""Parser for the live ``/etc/nvpmodel.conf`` — the authority on a device's power modes.

NVIDIA ships one conf per board (``/etc/nvpmodel.conf`` → ``/etc/nvpmodel/nvpmodel_<board>.conf``)
and they change between L4T releases, so edged reads the conf on the device instead of trusting
its own profile files blindly. Format::

    < PARAM TYPE=CLOCK NAME=GPU >          maps a setting name to sysfs paths (ARG path, ARG_KNEXT path)
    < POWER_MODEL ID=2 NAME=MODE_30W >     one mode: lines "PARAM KEY VALUE"
    CPU_ONLINE CORE_4 0
    CPU_A78_0 MAX_FREQ 1728000             CPU in kHz; GPU and EMC in Hz; -1 = no cap
    TPC_POWER_GATING TPC_PG_MASK 240
    < PM_CONFIG DEFAULT=2 >                mandatory

Only what edged displays and decides on is interpreted (online CPUs, caps, masks); every raw
line is kept so a diagnostics dump can show the whole mode, and every PARAM's argument paths are
kept so a switch can be verified where nvpmodel wrote it (:mod:`edged.power.verify`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Cap = float | Literal["uncapped"] | None

_HEADER = re.compile(r"^<\s*([A-Z_]+)((?:\s+[A-Z_]+=\S+)*)\s*>$")
CPU_CLOCK_PARAM = re.compile(r"^CPU_(A57|DENVER|CARMEL|A78|A78AE|ARM)(_\d+)?$")


class ConfError(ValueError):
    """The conf cannot be used; the message names file and line."""


@dataclass(frozen=True)
class ConfMode:
    """One POWER_MODEL block, interpreted. Caps are MHz, ``uncapped`` or None (no line)."""

    id: int
    name: str
    line: int
    cpus_online: int | None
    cpus_total: int | None
    cpu_max_mhz: Cap
    gpu_max_mhz: Cap
    emc_max_mhz: Cap
    tpc_pg_mask: int | None
    fbp_pg_mask: int | None
    settings: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class NvpConf:
    path: str
    modes: dict[int, ConfMode]
    default_mode: int
    fan_default: str | None = None
    params: dict[str, str] = field(default_factory=dict)  # PARAM NAME -> TYPE
    warnings: tuple[str, ...] = ()  # lines skipped because edged could not read them
    param_args: dict[str, dict[str, str]] = field(default_factory=dict)  # PARAM NAME -> {ARG: sysfs path}

    def names(self) -> dict[int, str]:
        return {i: m.name for i, m in self.modes.items()}

    def paths(self, param: str, arg: str) -> tuple[str, ...]:
        """The sysfs files a ``PARAM ARG`` setting may be written to: ARG's path, then ARG_KNEXT's
        (newer kernels; nvpmodel uses whichever exists)."""
        args = self.param_args.get(param, {})
        return tuple(args[k] for k in (arg, f"{arg}_KNEXT") if k in args)


def _cap(value: str, divisor: float, where: str) -> Cap:
    """-1 means no cap (the facts); 0 cannot be a real maximum clock, so it reads as no cap too."""
    try:
        number = int(value)
    except ValueError:
        raise ConfError(f"{where}: frequency {value!r} is not an integer") from None
    return "uncapped" if number <= 0 else round(number / divisor, 3)


def _fold_caps(values: list[Cap]) -> Cap:
    if not values:
        return None
    if "uncapped" in values:
        return "uncapped"
    return max(v for v in values if isinstance(v, float))


def _build_mode(mode_id: int, name: str, line: int, settings: list[tuple[str, str, str, int]], path: str) -> ConfMode:
    cores: dict[str, bool] = {}
    cpu_caps: list[Cap] = []
    gpu: Cap = None
    emc: Cap = None
    tpc = fbp = None
    for param, key, value, lineno in settings:
        where = f"{path}:{lineno}"
        if param == "CPU_ONLINE":
            cores[key] = value.strip() == "1"
        elif CPU_CLOCK_PARAM.match(param) and key == "MAX_FREQ":
            cpu_caps.append(_cap(value, 1000.0, where))  # kHz -> MHz
        elif param == "GPU" and key == "MAX_FREQ":
            gpu = _cap(value, 1e6, where)
        elif param == "EMC" and key == "MAX_FREQ":
            emc = _cap(value, 1e6, where)
        elif key in ("TPC_PG_MASK", "FBP_PG_MASK"):
            try:
                mask = int(value, 0)
            except ValueError:
                raise ConfError(f"{where}: {key} {value!r} is not an integer") from None
            if key == "TPC_PG_MASK":
                tpc = mask
            else:
                fbp = mask
    return ConfMode(
        id=mode_id,
        name=name,
        line=line,
        cpus_online=sum(cores.values()) if cores else None,
        cpus_total=len(cores) or None,
        cpu_max_mhz=_fold_caps(cpu_caps),
        gpu_max_mhz=gpu,
        emc_max_mhz=emc,
        tpc_pg_mask=tpc,
        fbp_pg_mask=fbp,
        settings=tuple((p, k, v) for p, k, v, _ in settings),
    )


def parse_conf(text: str, path: str = "<nvpmodel.conf>") -> NvpConf:
    """Parse conf text; raise :class:`ConfError` with ``path:line`` for anything edged cannot trust."""
    modes: dict[int, ConfMode] = {}
    params: dict[str, str] = {}
    param_args: dict[str, dict[str, str]] = {}
    default: int | None = None
    fan: str | None = None
    block: tuple[str, dict[str, str], int] | None = None
    body: list[tuple[str, str, str, int]] = []
    warnings: list[str] = []

    def close() -> None:
        if block and block[0] == "POWER_MODEL":
            attrs, line = block[1], block[2]
            if "ID" not in attrs or "NAME" not in attrs:
                raise ConfError(f"{path}:{line}: POWER_MODEL needs ID= and NAME=")
            try:
                mode_id = int(attrs["ID"])
            except ValueError:
                raise ConfError(f"{path}:{line}: POWER_MODEL ID {attrs['ID']!r} is not an integer") from None
            if mode_id in modes:
                raise ConfError(
                    f"{path}:{line}: duplicate POWER_MODEL ID={mode_id} (first at line {modes[mode_id].line})"
                )
            modes[mode_id] = _build_mode(mode_id, attrs["NAME"], line, body, path)

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("<"):
            header = _HEADER.match(line)
            if not header:
                raise ConfError(f"{path}:{lineno}: malformed block header {raw.strip()!r}")
            close()
            kind = header.group(1)
            attrs = dict(a.split("=", 1) for a in header.group(2).split())
            block, body = (kind, attrs, lineno), []
            if kind == "PARAM" and "NAME" in attrs:
                params[attrs["NAME"]] = attrs.get("TYPE", "")
                param_args.setdefault(attrs["NAME"], {})
            elif kind == "PM_CONFIG":
                try:
                    default = int(attrs.get("DEFAULT", ""))
                except ValueError:
                    raise ConfError(f"{path}:{lineno}: PM_CONFIG DEFAULT must be a mode ID") from None
            elif kind == "FAN_CONFIG":
                fan = attrs.get("DEFAULT")
            continue
        if block is None:
            raise ConfError(f"{path}:{lineno}: line outside any < ... > block: {raw.strip()!r}")
        parts = line.split()
        if block[0] == "PARAM" and "NAME" in block[1] and len(parts) == 2:
            param_args[block[1]["NAME"]][parts[0]] = parts[1]
        if block[0] == "POWER_MODEL":
            # A line edged does not understand must not take power control away on a device: skip, say so.
            if len(parts) < 3:
                warnings.append(f"{path}:{lineno}: skipped {raw.strip()!r} (expected 'PARAM KEY VALUE')")
                continue
            body.append((parts[0], parts[1], " ".join(parts[2:]), lineno))
    close()
    if not modes:
        raise ConfError(f"{path}: no POWER_MODEL blocks")
    if default is None:
        raise ConfError(f"{path}: < PM_CONFIG DEFAULT=n > is missing (it is mandatory)")
    if default not in modes:
        raise ConfError(f"{path}: PM_CONFIG DEFAULT={default} is not a POWER_MODEL ID ({sorted(modes)})")
    return NvpConf(
        path=path,
        modes=modes,
        default_mode=default,
        fan_default=fan,
        params=params,
        warnings=tuple(warnings),
        param_args=param_args,
    )


def load_conf(path: str | Path) -> NvpConf:
    """Read and parse a conf file; unreadable files raise :class:`ConfError` too."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_conf(text, str(path))
