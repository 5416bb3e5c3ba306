"""Power profiles: one ``power_profiles/<module>.yaml`` per Jetson module.

A profile holds what edged knows about a module's nvpmodel modes *before* it sees a device
(IDs, names, caps, budget, power-gating masks, default), where each fact came from, and edged's
own per-mode runtime settings (batching) plus the aliases ``max``/``balanced``/``eco``.

Modes are a mapping keyed by their real nvpmodel ID, never a list: IDs are not contiguous on
every module, and jtop's position-based name→ID mapping is exactly the bug edged avoids.
Caps are ``uncapped`` (the conf writes -1), a number in MHz, or ``null`` when the reference
facts do not state the value; the live ``/etc/nvpmodel.conf`` fills those in (see
:mod:`edged.power.table`) and wins over the profile wherever both speak.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edged.config.yamlsrc import ConfigError, load_yaml_file, validate
from edged.power.reboot import ModeFacts, RebootPrediction, predict_reboot

Cap = float | Literal["uncapped"] | None
ALIASES = ("max", "balanced", "eco")
SOCS = ("t210", "t194", "t234")  # SoCs a profile can describe (others are detected, with no profile)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingSettings(Strict):
    """The per-mode dynamic-batcher knobs edged retunes after a mode change (Triton semantics)."""

    max_batch_size: int = Field(ge=1, le=256)
    max_queue_delay_ms: float = Field(ge=0, le=10_000)


FALLBACK_BATCHING = BatchingSettings(max_batch_size=4, max_queue_delay_ms=20.0)


class ModeSpec(Strict):
    """One nvpmodel mode as the reference facts describe it."""

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    cpus_online: int | None = Field(default=None, ge=1, le=64)
    cpu_max_mhz: Cap = None
    gpu_max_mhz: Cap = None
    emc_max_mhz: Cap = None
    # Nominal budget from the mode's name; names cap clocks, they do not meter power. MAXN: null.
    budget_w: float | None = Field(default=None, gt=0, le=200)
    tpc_pg_mask: int | None = Field(default=None, ge=0)
    fbp_pg_mask: int | None = Field(default=None, ge=0)
    # Listed by only some conf versions: its absence from the live conf is not a divergence.
    optional: bool = False
    batching: BatchingSettings

    @model_validator(mode="after")
    def _caps_positive(self) -> ModeSpec:
        for key in ("cpu_max_mhz", "gpu_max_mhz", "emc_max_mhz"):
            value = getattr(self, key)
            if isinstance(value, float) and value <= 0:
                raise ValueError(f"{key} must be > 0 MHz, 'uncapped' or null")
        return self


class MatchRules(Strict):
    """How a device is recognised: device-tree part numbers and the nvpmodel conf file name."""

    compatible: tuple[str, ...] = Field(min_length=1)
    nvpmodel_conf: tuple[str, ...] = ()


class Provenance(Strict):
    """Where the facts come from; ``unverified`` lists dotted keys (``modes.4.cpu_max_mhz``, ``modes.4``)."""

    source: str
    unverified: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


class PowerProfile(Strict):
    schema_: Literal["edged.power-profile/v1"] = Field(alias="schema")
    module: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{2,80}$")
    title: str
    soc: Literal["t210", "t194", "t234"]
    board: str = Field(pattern=r"^p\d{4}(-\d{4})?$")
    variant: Literal["standard", "super"] = "standard"
    cpus_total: int = Field(ge=1, le=64)
    match: MatchRules
    default_mode: int = Field(ge=0)
    # An alias names one mode, or a preference list (the first the live conf offers wins; the last
    # must be a mode every conf has), e.g. ``max: [8, 2]`` where mode 8 is optional.
    aliases: dict[Literal["max", "balanced", "eco"], int | tuple[int, ...]]
    modes: dict[int, ModeSpec] = Field(min_length=1)
    provenance: Provenance

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _consistent(self) -> PowerProfile:
        if any(mode_id < 0 for mode_id in self.modes):
            raise ValueError("mode IDs are >= 0")
        if self.default_mode not in self.modes:
            raise ValueError(f"default_mode {self.default_mode} is not a mode ID")
        missing = [a for a in ALIASES if a not in self.aliases]
        if missing:
            raise ValueError(f"aliases: missing {', '.join(missing)}")
        for alias in self.aliases:
            targets = self.alias_targets(alias)
            if not targets or any(t not in self.modes for t in targets) or self.modes[targets[-1]].optional:
                shown = targets[0] if len(targets) == 1 else list(targets)
                raise ValueError(f"alias {alias} -> {shown}: not a (non-optional) mode ID")
        names = [m.name.upper() for m in self.modes.values()]
        if len(set(names)) != len(names):
            raise ValueError("mode names must be unique")
        for mode_id, mode in self.modes.items():
            if mode.cpus_online is not None and mode.cpus_online > self.cpus_total:
                raise ValueError(f"mode {mode_id}: cpus_online {mode.cpus_online} > cpus_total {self.cpus_total}")
        for key in self.provenance.unverified:
            if not _resolves(self, key):
                raise ValueError(f"provenance.unverified: {key!r} names no field of this profile")
        return self

    def is_unverified(self, key: str) -> bool:
        """True when ``key`` or one of its parents (``modes.4`` covers ``modes.4.gpu_max_mhz``) is unverified."""
        return any(key == u or key.startswith(u + ".") for u in self.provenance.unverified)

    def alias_targets(self, alias: str) -> tuple[int, ...]:
        target = self.aliases[alias]  # type: ignore[index]
        return (target,) if isinstance(target, int) else tuple(target)

    def facts(self, mode_id: int) -> ModeFacts:
        """A mode for the reboot rule. The facts state TPC masks for most modules and FBP masks for
        few: an unstated mask is unknown here (with a live conf, a missing line means "no gating")."""
        m = self.modes[mode_id]
        return ModeFacts(mode_id, m.tpc_pg_mask, m.fbp_pg_mask, m.cpus_online, masks_known=False)

    def reboot(self, from_id: int, to_id: int) -> RebootPrediction:
        """The reboot prediction on profile facts alone (:func:`edged.power.reboot.predict_reboot`)."""
        return predict_reboot(self.soc, self.facts(from_id), self.facts(to_id))


def _resolves(profile: PowerProfile, key: str) -> bool:
    node: object = profile
    for part in key.split("."):
        if isinstance(node, dict):
            lookup = int(part) if part.isdigit() else part
            if lookup not in node:
                return False
            node = node[lookup]
        elif isinstance(node, BaseModel) and part in type(node).model_fields:
            node = getattr(node, part)
        elif isinstance(node, BaseModel) and part == "schema":
            node = node.schema_  # type: ignore[attr-defined]
        else:
            return False
    return True


def default_profile_dir() -> Path:
    """The ``power_profiles/`` beside the package in a checkout, else the system data dir."""
    here = Path(__file__).resolve().parents[2] / "power_profiles"
    return here if here.is_dir() else Path("/usr/share/edged/power_profiles")


def load_profile(path: str | Path) -> PowerProfile:
    """Load one profile; errors are ``file:line: key: message``. The file stem must equal ``module``."""
    path = Path(path)
    profile = validate(PowerProfile, load_yaml_file(path))
    if profile.module != path.stem:
        raise ConfigError([f"{path}:1: module: {profile.module!r} must match the file name {path.stem!r}"])
    return profile


def load_profiles(directory: str | Path | None = None) -> dict[str, PowerProfile]:
    """Load every ``*.yaml`` in ``directory``; all files' problems are reported together."""
    directory = Path(directory) if directory is not None else default_profile_dir()
    profiles: dict[str, PowerProfile] = {}
    problems: list[str] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            profiles[path.stem] = load_profile(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return profiles


def board_matches(board: str, part: str) -> bool:
    """``p3448`` matches ``p3448-0002-b00``; ``p3767-0000`` matches ``p3767-0000`` but not ``p3767-0001``."""
    return part == board or part.startswith(board + "-")


def select_profile(
    profiles: dict[str, PowerProfile],
    parts: tuple[str, ...],
    conf_name: str | None,
    conf_modes: dict[int, str] | None,
) -> tuple[PowerProfile | None, str]:
    """Pick the profile for a device; returns ``(profile, how it was chosen)``.

    Order: device-tree part numbers narrow the candidates (standard and super share a part
    number); the nvpmodel conf's file name, then its ``(ID, name)`` pairs pick among them. With
    no part-number match the conf's modes alone may still identify the module uniquely.
    """

    def conf_score(p: PowerProfile) -> int:
        if not conf_modes:
            return 0
        return sum(1 for i, m in p.modes.items() if conf_modes.get(i, "").upper() == m.name.upper())

    def specificity(p: PowerProfile) -> int:
        """Length of the most specific part number that matched (p2888-0008 beats p2888)."""
        return max((len(b) for b in p.match.compatible for part in parts if board_matches(b, part)), default=0)

    matched = [p for p in profiles.values() if specificity(p)]
    best_fit = max((specificity(p) for p in matched), default=0)
    candidates = [p for p in matched if specificity(p) == best_fit]
    if conf_name:
        by_name = [p for p in candidates or profiles.values() if conf_name in p.match.nvpmodel_conf]
        if len(by_name) == 1:
            return by_name[0], f"nvpmodel conf {conf_name}"
    if candidates:
        best = max(candidates, key=lambda p: (conf_score(p), p.variant == "standard"))
        how = "device-tree compatible" + (" + nvpmodel conf modes" if conf_modes and len(candidates) > 1 else "")
        return best, how
    if conf_modes:
        exact = [
            p
            for p in profiles.values()
            if all(conf_modes.get(i, "").upper() == m.name.upper() for i, m in p.modes.items() if not m.optional)
            and set(conf_modes) <= set(p.modes)
        ]
        if len(exact) == 1:
            return exact[0], "nvpmodel conf modes"
    return None, "no profile matches this device (parts: " + (", ".join(parts) or "none") + ")"
