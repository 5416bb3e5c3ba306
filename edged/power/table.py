"""The effective mode table of one device: the live nvpmodel conf merged with edged's profile.

Rules, in one place because edgectl and the daemon must agree on them:

* The live conf is authoritative for which modes exist, their names, caps, masks and the
  default. Where the profile states a different value, a warning says so and the conf wins.
* The profile contributes what a conf cannot know: edged's batching per mode, the nominal
  budget, aliases and provenance. A profile mode whose ID the conf names differently is treated
  as unknown (its batching is *not* applied): an ID alone never identifies a mode.
* Without a conf (profile only) values are shown as the profile states them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from edged.power.conf import Cap, ConfMode, NvpConf
from edged.power.profiles import ALIASES, FALLBACK_BATCHING, BatchingSettings, ModeSpec, PowerProfile
from edged.power.reboot import ModeFacts, RebootPrediction, predict_reboot

if TYPE_CHECKING:
    from edged.models.manifest import BatchingSpec

_FIELDS = ("cpus_online", "cpu_max_mhz", "gpu_max_mhz", "emc_max_mhz")


class UnknownMode(LookupError):
    """A MODE argument matched no ID, name or alias; the message lists the choices."""


@dataclass(frozen=True)
class ModeView:
    id: int
    name: str
    cpus_online: int | None
    cpus_total: int | None
    cpu_max_mhz: Cap
    gpu_max_mhz: Cap
    emc_max_mhz: Cap
    budget_w: float | None
    tpc_pg_mask: int | None
    fbp_pg_mask: int | None
    batching: BatchingSettings
    aliases: tuple[str, ...] = ()
    origin: str = "conf+profile"  # "conf+profile", "conf" (not in the profile) or "profile" (no conf)
    unverified: tuple[str, ...] = ()  # fields shown from unverified profile facts

    def as_dict(self) -> dict:
        out = asdict(self)
        out["batching"] = self.batching.model_dump()
        return out


def budget_from_name(name: str) -> float | None:
    """``MODE_15W`` → 15.0, ``7W_AI`` → 7.0, ``MAXN`` → None (MAXN has no budget)."""
    found = re.search(r"(?:^|_)(\d+(?:\.\d+)?)W(?:_|$)", name.upper())
    return float(found.group(1)) if found else None


def _differs(a: Cap | int, b: Cap | int) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) > 0.05
    return a != b


@dataclass
class PowerTable:
    modes: dict[int, ModeView]
    default_mode: int | None
    profile: PowerProfile | None = None
    conf: NvpConf | None = None
    warnings: list[str] = field(default_factory=list)
    soc: str | None = None  # the SoC the reboot rule applies to (the device's, else the profile's)

    @property
    def aliases(self) -> dict[str, int]:
        return {a: m.id for m in self.modes.values() for a in m.aliases}

    def resolve(self, token: str | int) -> ModeView:
        """MODE as a technician types it: an ID, a name (any case) or an alias."""
        text = str(token).strip()
        if text.lstrip("-").isdigit():
            if int(text) in self.modes:
                return self.modes[int(text)]
        elif text.lower() in self.aliases:
            return self.modes[self.aliases[text.lower()]]
        else:
            for mode in self.modes.values():
                if mode.name.upper() == text.upper():
                    return mode
        raise UnknownMode(
            f"unknown power mode {text!r}: choose an ID ({', '.join(str(i) for i in sorted(self.modes))}), "
            f"a name ({', '.join(m.name for m in self.modes.values())})"
            + (f" or an alias ({', '.join(sorted(self.aliases))})" if self.aliases else "")
        )

    def reboot(self, from_id: int, to_id: int) -> RebootPrediction:
        """Will switching ``from_id`` -> ``to_id`` prompt for a reboot? (:mod:`edged.power.reboot`).

        With a live conf a missing mask line means "no gating"; from profile facts alone it means unknown.
        """
        def facts(m: ModeView) -> ModeFacts:
            return ModeFacts(m.id, m.tpc_pg_mask, m.fbp_pg_mask, m.cpus_online, masks_known=self.conf is not None)

        return predict_reboot(self.soc, facts(self.modes[from_id]), facts(self.modes[to_id]))

    def batching(self, mode_id: int) -> BatchingSettings:
        """edged's batching for a mode; the fallback for a mode the profile does not describe."""
        mode = self.modes.get(mode_id)
        return mode.batching if mode is not None else FALLBACK_BATCHING

    def as_dict(self) -> dict:
        return {
            "module": self.profile.module if self.profile else None,
            "title": self.profile.title if self.profile else None,
            "conf": self.conf.path if self.conf else None,
            "default_mode": self.default_mode,
            "aliases": self.aliases,
            "modes": [m.as_dict() for m in self.modes.values()],
            "warnings": list(self.warnings),
        }


def _from_profile(mode_id: int, spec: ModeSpec, profile: PowerProfile) -> ModeView:
    unverified = tuple(
        f for f in (*_FIELDS, "tpc_pg_mask", "fbp_pg_mask", "budget_w") if profile.is_unverified(f"modes.{mode_id}.{f}")
    )
    return ModeView(
        id=mode_id,
        name=spec.name,
        cpus_online=spec.cpus_online,
        cpus_total=profile.cpus_total,
        cpu_max_mhz=spec.cpu_max_mhz,
        gpu_max_mhz=spec.gpu_max_mhz,
        emc_max_mhz=spec.emc_max_mhz,
        budget_w=spec.budget_w,
        tpc_pg_mask=spec.tpc_pg_mask,
        fbp_pg_mask=spec.fbp_pg_mask,
        batching=spec.batching,
        origin="profile",
        unverified=unverified,
    )


def _merge(cm: ConfMode, spec: ModeSpec | None, profile: PowerProfile | None, warnings: list[str]) -> ModeView:
    if spec is None or profile is None:
        return ModeView(
            id=cm.id,
            name=cm.name,
            cpus_online=cm.cpus_online,
            cpus_total=cm.cpus_total,
            cpu_max_mhz=cm.cpu_max_mhz,
            gpu_max_mhz=cm.gpu_max_mhz,
            emc_max_mhz=cm.emc_max_mhz,
            budget_w=budget_from_name(cm.name),
            tpc_pg_mask=cm.tpc_pg_mask,
            fbp_pg_mask=cm.fbp_pg_mask,
            batching=FALLBACK_BATCHING,
            origin="conf",
        )
    values: dict[str, object] = {}
    unverified: list[str] = []
    for key in _FIELDS:
        live, ours = getattr(cm, key), getattr(spec, key)
        if live is not None and ours is not None and _differs(live, ours):
            warnings.append(
                f"mode {cm.id} {cm.name}: {key} is {ours} in the profile, {live} in the live conf; using the conf"
            )
        values[key] = live if live is not None else ours
        if live is None and ours is not None and profile.is_unverified(f"modes.{cm.id}.{key}"):
            unverified.append(key)
    for key in ("tpc_pg_mask", "fbp_pg_mask"):
        live, ours = getattr(cm, key), getattr(spec, key)
        if ours is not None and live != ours:
            shown = "no mask line" if live is None else str(live)
            warnings.append(
                f"mode {cm.id} {cm.name}: {key} is {ours} in the profile, {shown} in the live conf; using the conf"
            )
    return ModeView(
        id=cm.id,
        name=cm.name,
        cpus_total=cm.cpus_total or profile.cpus_total,
        budget_w=spec.budget_w,
        tpc_pg_mask=cm.tpc_pg_mask,
        fbp_pg_mask=cm.fbp_pg_mask,
        batching=spec.batching,
        origin="conf+profile",
        unverified=tuple(unverified),
        **values,  # type: ignore[arg-type]
    )


def build_table(profile: PowerProfile | None, conf: NvpConf | None, soc: str | None = None) -> PowerTable | None:
    """Merge; ``None`` when there is neither (a generic Linux host has no power modes).

    ``soc`` is the device's (``t234``...); without it the profile's SoC picks the reboot rule.
    """
    if profile is None and conf is None:
        return None
    warnings: list[str] = list(conf.warnings) if conf else []
    modes: dict[int, ModeView] = {}
    if conf is None:
        assert profile is not None
        modes = {i: _from_profile(i, spec, profile) for i, spec in profile.modes.items()}
        default = profile.default_mode
    else:
        specs = profile.modes if profile else {}
        for mode_id, cm in sorted(conf.modes.items()):
            spec = specs.get(mode_id)
            if spec is not None and spec.name.upper() != cm.name.upper():
                warnings.append(
                    f"mode {mode_id}: the profile calls it {spec.name}, the live conf {cm.name}; "
                    f"treating it as unknown to the profile (fallback batching)"
                )
                spec = None
            elif spec is None and profile is not None:
                warnings.append(f"mode {mode_id} {cm.name} is not in profile {profile.module}: fallback batching")
            modes[mode_id] = _merge(cm, spec, profile, warnings)
        for mode_id, spec in profile.modes.items() if profile else ():
            if mode_id not in conf.modes and not spec.optional:
                warnings.append(f"mode {mode_id} {spec.name} is in the profile but not in the live conf: not offered")
        default = conf.default_mode
        if profile is not None and profile.default_mode != default:
            note = " (the profile's default is unverified)" if profile.is_unverified("default_mode") else ""
            warnings.append(f"default mode is {profile.default_mode} in the profile, {default} in the live conf{note}")
    if profile is not None:
        for alias in ALIASES:
            targets = profile.alias_targets(alias)
            target = next((t for t in targets if _offers(modes.get(t), profile.modes[t])), None)
            if target is None:
                last = targets[-1]
                warnings.append(
                    f"alias {alias} -> {last} {profile.modes[last].name} dropped: no such mode on this device"
                )
                continue
            mode = modes[target]
            modes[target] = ModeView(**{**mode.__dict__, "aliases": mode.aliases + (alias,)})
    soc = soc or (profile.soc if profile else None)
    return PowerTable(modes=modes, default_mode=default, profile=profile, conf=conf, warnings=warnings, soc=soc)


def _offers(mode: ModeView | None, spec: ModeSpec) -> bool:
    """The device has this profile mode: same ID and name, and known to the profile."""
    return mode is not None and mode.name.upper() == spec.name.upper() and mode.origin != "conf"


def effective_batching(model: BatchingSpec, mode: BatchingSettings) -> BatchingSpec:
    """A model's batching under a power mode.

    The manifest's ``max_batch_size`` is a property of the model (a TensorRT engine is built for
    a maximum batch), so the mode can only lower it; the queue delay is the mode's, because how
    long to wait for a fuller batch depends on how fast the capped clocks run one.
    """
    return model.model_copy(
        update={
            "max_batch_size": min(model.max_batch_size, mode.max_batch_size),
            "max_queue_delay_ms": mode.max_queue_delay_ms,
        }
    )
