"""Config sub-models for the ``power:`` and ``telemetry:`` sections of the main config.

Every field has a default so a config file without these sections is valid: on a plain x86
host the daemon simply finds no nvpmodel and no rails and says so. ``extra="forbid"`` makes a
misspelt key an error with file, line and key (see :mod:`edged.config.yamlsrc`) instead of a
setting silently ignored on a device in the field.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from edged.config.yamlsrc import load_yaml_file, validate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PowerConfig(_Strict):
    """Where the Jetson power tools live and how edged talks to them.

    ``nvpmodel``/``jetson_clocks`` are looked up on PATH when they hold no slash (sudo's
    secure_path contains /usr/sbin where L4T installs both). ``sysroot`` prefixes every
    /proc, /sys and /etc path so tests can point edged at a fake device tree.
    """

    nvpmodel: str = "nvpmodel"
    jetson_clocks: str = "jetson_clocks"
    # jetson_clocks --store/--restore file; kept out of root's home so `off` works from any shell.
    jetson_clocks_store: Path = Path("/var/lib/edged/jetson_clocks.conf")
    query_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # Orin boards take several seconds to re-clock; a reboot prompt never waits this long (stdin is closed).
    switch_timeout_s: float = Field(default=60.0, gt=0, le=600)
    profile_dir: Path | None = None  # None: the power_profiles/ shipped with edged
    sysroot: Path = Path("/")
    control_socket: Path = Path("/run/edged/control.sock")
    control_timeout_s: float = Field(default=5.0, gt=0, le=300)
    admin_group: str = "edged-admin"


class PrometheusConfig(_Strict):
    """A text-format /metrics endpoint; bound to 127.0.0.1 only (scrape it through an SSH tunnel or a local agent)."""

    enabled: bool = False
    port: int = Field(default=9464, ge=1024, le=65535)


class TelemetryConfig(_Strict):
    """Telemetry publishing. ``energy_interval_s`` is the power-sampling period behind energy per image
    (never shorter than the source's own refresh period, e.g. the INA3221 ``update_interval``), so it is
    separate from ``interval_s``. ``energy_max_wait_s`` bounds how long a result waits for the power
    sample after its inference window; a result that would wait longer carries no ``energy_mj``."""

    enabled: bool = True
    interval_s: float = Field(default=10.0, ge=0.5, le=3600)
    energy_interval_s: float = Field(default=0.05, ge=0.01, le=1.0)
    energy_max_wait_s: float = Field(default=1.0, ge=0.0, le=10.0)
    prometheus: PrometheusConfig = PrometheusConfig()


class _Sections(BaseModel):
    """The two sections edgectl reads; the rest of the main config belongs to the daemon's schema."""

    model_config = ConfigDict(extra="ignore")
    power: PowerConfig = PowerConfig()
    telemetry: TelemetryConfig = TelemetryConfig()


def load_power_sections(path: str | Path | None) -> tuple[PowerConfig, TelemetryConfig]:
    """Read only ``power:`` and ``telemetry:`` from the main config file (``None``: defaults).

    edgectl uses this so it shares the daemon's socket path and tool paths without depending on
    the rest of the daemon's schema. Errors are ``file:line: power.key: message``.
    """
    if path is None:
        return PowerConfig(), TelemetryConfig()
    src = load_yaml_file(path)
    if src.data is None or src.data == {}:
        return PowerConfig(), TelemetryConfig()
    sections = validate(_Sections, src)
    return sections.power, sections.telemetry
