"""No ONNX Runtime telemetry from any entry point; the CLI imports heavy modules only when used."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, cr_variants, storescu

HEAVY = ("onnxruntime", "numpy", "pydicom", "pynetdicom", "cv2", "onnx", "paho")


def _store(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if ".onnxruntime" in p.parts]


def test_onnxruntime_writes_a_telemetry_store_without_the_variable(tmp_path: Path, tiny_repo: Path) -> None:
    """The control: without ORT_DISABLE_TELEMETRY this onnxruntime does phone home, so the
    daemon test below can fail."""
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env["HOME"] = str(tmp_path)
    model = tiny_repo / "chexnet-tiny" / "model.onnx"
    subprocess.run([sys.executable, "-c", "import onnxruntime as o, sys; o.InferenceSession(sys.argv[1], "
                    "providers=['CPUExecutionProvider'])", str(model)], env=env, check=True, timeout=120)
    if not _store(tmp_path):
        pytest.skip("this onnxruntime writes no telemetry store even without ORT_DISABLE_TELEMETRY")


def test_the_daemon_leaves_no_telemetry_store(daemon_factory, collector, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("ORT_DISABLE_TELEMETRY", raising=False)  # the daemon must set it itself
    d = daemon_factory().start()
    assert storescu(d.port, *cr_variants(tmp_path, 1)).returncode == 0
    collector.wait_for(lambda c: c.results(), 60)
    assert d.terminate() == 0
    assert not _store(home), _store(home)


def test_every_unit_and_the_worker_set_the_variable() -> None:
    for unit in ("edged.service", "edged-engines.service"):
        cfg = configparser.ConfigParser(strict=False, interpolation=None)
        cfg.optionxform = str  # type: ignore[assignment]
        cfg.read(REPO / "systemd" / unit)
        assert "ORT_DISABLE_TELEMETRY=1" in cfg["Service"]["Environment"].split(), unit
    from edged.service.install import bootstrap_unit

    assert "ORT_DISABLE_TELEMETRY=1" in bootstrap_unit("/usr/bin/python3", True)
    child = (REPO / "edged/backends/worker/child.py").read_text()
    assert child.index('os.environ["ORT_DISABLE_TELEMETRY"] = "1"') < child.index("import onnxruntime as ort")


def _imported(*argv: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    code = ("import sys, runpy\nsys.argv = ['edged', *sys.argv[1:]]\ntry:\n    runpy.run_module('edged', "
            "run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
            "print('MODULES', ' '.join(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)\n"
            "sys.exit(code)\n")
    run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO, timeout=60)
    line = next(x for x in run.stderr.splitlines() if x.startswith("MODULES "))
    return run, set(line.split()[1:])


@pytest.mark.parametrize("argv", [("--version",), ("check",), ("check", "-c", "docs/examples/edged.yaml"),
                                  ("install", "--help")])
def test_light_commands_import_no_heavy_module(argv: tuple[str, ...]) -> None:
    run, modules = _imported(*argv)
    assert run.returncode in (0, 2), run.stderr[-2000:]
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_a_heavy_command_still_gets_its_modules() -> None:
    run, modules = _imported("engines", "list", "--cache-dir", "/nonexistent-edged-cache")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "numpy" in modules
