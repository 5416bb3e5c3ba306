"""A flashed device boots without noise: no mode warning for /etc/edged, the prebuild unit
asks to skip quietly where TensorRT is missing, and the drop-in folder exists with its mode."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _service(unit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = None
    for line in (REPO / "systemd" / unit).read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def _tmpfiles_mode(path: str) -> str:
    for line in (REPO / "systemd/edged.tmpfiles").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] == "d" and fields[1] == path:
            return fields[2]
    raise AssertionError(f"{path} not in edged.tmpfiles")


def test_configuration_directory_mode_matches_tmpfiles() -> None:
    """systemd logs "already exists but the mode is different" at every start otherwise."""
    for unit in ("edged.service", "edged-engines.service"):
        service = _service(unit)
        assert service["ConfigurationDirectory"] == ["edged"]
        assert service.get("ConfigurationDirectoryMode") == [_tmpfiles_mode("/etc/edged")], unit
    assert _tmpfiles_mode("/etc/edged/edged.d") == "0750"


def test_prebuild_unit_skips_quietly_without_tensorrt() -> None:
    (exec_start,) = _service("edged-engines.service")["ExecStart"]
    assert "engines build --all --skip-without-tensorrt" in exec_start
