"""Everything about power on this host, assembled once: platform, profile, live conf, mode table.

edgectl and the daemon both start from :func:`open_power` so they cannot disagree about which
modes exist or what an alias means. Nothing here needs root: reading the conf, the device tree
and ``nvpmodel -q`` work for any user (``-q`` may print an emc_iso_cap error without root and
still answer; when it does not, the status file is the fallback).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edged.config.yamlsrc import ConfigError
from edged.power.clocks import JetsonClocks
from edged.power.conf import ConfError, NvpConf, load_conf
from edged.power.config import PowerConfig
from edged.power.nvpmodel import Nvpmodel, NvpmodelError, read_status_file
from edged.power.platform import Platform, detect_platform, under
from edged.power.profiles import BatchingSettings, PowerProfile, load_profiles, select_profile
from edged.power.table import PowerTable, build_table
from edged.power.verify import ModeVerifier


@dataclass
class PowerContext:
    config: PowerConfig
    platform: Platform
    nvpmodel: Nvpmodel
    profile: PowerProfile | None = None
    profile_reason: str = ""
    conf: NvpConf | None = None
    table: PowerTable | None = None
    problems: list[str] = field(default_factory=list)  # conf/profile errors that disabled something

    @property
    def warnings(self) -> list[str]:
        return self.problems + (self.table.warnings if self.table else [])

    def unavailable_reason(self) -> str | None:
        """Why modes cannot be switched here, or None when they can."""
        if not self.platform.is_jetson:
            return f"not a Jetson (generic Linux, {self.platform.machine}): no nvpmodel power modes"
        if self.conf is None:
            return "no usable /etc/nvpmodel.conf" + (f" ({self.problems[0]})" if self.problems else "")
        if self.nvpmodel.path is None:
            return f"nvpmodel not found ({self.nvpmodel.binary})"
        return None

    def current_mode(self) -> dict | None:
        """``{"id", "name", "source", "batching"}`` for the current mode; None on a host without modes."""
        if self.table is None:
            return None
        mode_id, name, source, error = None, None, "", ""
        if self.nvpmodel.path is not None:
            try:
                query = self.nvpmodel.query()
                mode_id, name, source = query.id, query.name, "nvpmodel -q"
            except NvpmodelError as exc:
                error = str(exc)
        if mode_id is None:
            mode_id = read_status_file(self.platform.root)
            source = "/var/lib/nvpmodel/status"
            if mode_id is None and self.table.default_mode is not None:
                mode_id, source = self.table.default_mode, "PM_CONFIG DEFAULT"
        if mode_id is None:
            return None
        view = self.table.modes.get(mode_id)
        out = {
            "id": mode_id,
            "name": name or (view.name if view else None),
            "source": source,
            "batching": self.table.batching(mode_id).model_dump(),
        }
        if error:
            out["query_error"] = error
        return out

    def verifier(self) -> ModeVerifier | None:
        """Checks a switch on the board, from the live conf's PARAM paths; None without a conf."""
        return ModeVerifier(self.conf, self.platform.root) if self.conf is not None else None

    def clocks(self) -> JetsonClocks:
        """jetson_clocks for this board; its store is a device path, so it follows ``sysroot`` too."""
        return JetsonClocks(self.config.jetson_clocks, under(self.platform.root, str(self.config.jetson_clocks_store)),
                            root=self.platform.root)

    def batching_for(self, mode_id: int) -> BatchingSettings | None:
        """edged's batching for ``mode_id``; None on a host without power modes (use the manifest's)."""
        return self.table.batching(mode_id) if self.table is not None else None


def open_power(
    config: PowerConfig | None = None,
    *,
    profiles: dict[str, PowerProfile] | None = None,
) -> PowerContext:
    """Detect the platform under ``config.sysroot`` and build the mode table. Never raises for data problems."""
    config = config or PowerConfig()
    platform = detect_platform(config.sysroot)
    ctx = PowerContext(
        config=config,
        platform=platform,
        nvpmodel=Nvpmodel(
            config.nvpmodel, query_timeout_s=config.query_timeout_s, switch_timeout_s=config.switch_timeout_s
        ),
    )
    if not platform.is_jetson:
        return ctx
    if platform.nvpmodel_conf is not None:
        try:
            ctx.conf = load_conf(platform.nvpmodel_conf)
        except ConfError as exc:
            ctx.problems.append(f"live conf unusable: {exc}")
    if profiles is None:
        try:
            profiles = load_profiles(config.profile_dir)
        except ConfigError as exc:
            ctx.problems.append("power profiles unusable: " + "; ".join(exc.problems))
            profiles = {}
    ctx.profile, ctx.profile_reason = select_profile(
        profiles, platform.parts, platform.nvpmodel_conf_name, ctx.conf.names() if ctx.conf else None
    )
    if ctx.conf is None and ctx.profile is not None:
        ctx.problems.append(
            "showing profile facts only: the live conf is missing or unusable, so modes cannot be switched"
        )
    ctx.table = build_table(ctx.profile, ctx.conf, platform.soc)
    return ctx
