"""``edged tune`` end to end: a real process sweeping ONNX Runtime on the CPU (this host has no
power modes, so the current "mode" is ``none``), interrupted and resumed, producing the override
file, the table and the PNG; then a daemon started with the same state dir uses the tuned values.
A broken override file fails ``edged check`` with its file, line and key."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from helpers import REPO
from test_edgectl import edgectl

TUNE = ["--slo-ms", "200", "--seconds", "0.2"]  # the default grid, short points


def tune(config: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edged", "tune", "-c", str(config), *TUNE, *extra],
                          capture_output=True, text=True, cwd=REPO, timeout=120, env=dict(os.environ, **(env or {})))


def test_tune_interrupted_resumed_written_and_used_by_the_daemon(daemon_factory, tmp_path):
    d = daemon_factory()  # writes the config; started only after tuning (it would share the CPU)
    state = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-m", "edged", "tune", "-c", str(d.config), *TUNE],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stderr is not None
    seen = ""
    while "[2/18]" not in seen:  # progress: one line per point, as it is measured
        line = proc.stderr.readline()
        assert line, f"tune ended early: {seen}{proc.stderr.read()}"
        seen += line
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "run the same command again to resume" in err and "Traceback" not in err
    assert not (state / "tuned-batching.yaml").exists()
    assert (state / "tune" / "partial.json").exists()

    # resumed, without matplotlib: the file and the table still come, and it says why there is no PNG
    shim = tmp_path / "no-matplotlib"
    (shim / "matplotlib").mkdir(parents=True)
    (shim / "matplotlib" / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    run = tune(d.config, env={"PYTHONPATH": str(shim)})
    assert run.returncode == 0, run.stderr
    measured, saved = (int(w) for w in _words(run.stdout, "measured", "point(s),", "from"))
    assert saved >= 2 and measured + saved == 18, run.stdout
    assert "PNG not drawn: matplotlib is not installed" in run.stdout
    assert not (state / "tune" / "tune.png").exists()

    # again with matplotlib: nothing left to measure, the PNG is drawn
    run = tune(d.config)
    assert run.returncode == 0, run.stderr
    assert "measured 0 point(s), 18 from the saved run" in run.stdout
    png = state / "tune" / "tune.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = run.stdout
    assert "THROUGHPUT/s" in table and "p99 ms" in table
    chosen = [row.split() for row in table.splitlines() if row.startswith("*  chexnet-tiny")]
    assert len(chosen) == 1, table
    tuned = yaml.safe_load((state / "tuned-batching.yaml").read_text())
    assert tuned["schema"] == "edged.tuned-batching/v1"
    value = tuned["models"]["chexnet-tiny"]["modes"]["none"]
    assert [str(value["max_batch_size"]), f"{value['max_queue_delay_ms']:g}"] == chosen[0][3:5]
    assert value["measured"]["p99_ms"] <= 200

    d.start()
    log = d.log.read_text()
    want = (f"batching of chexnet-tiny: max_batch_size {value['max_batch_size']}, max_queue_delay_ms "
            f"{value['max_queue_delay_ms']:g} (tuned: {state / 'tuned-batching.yaml'} mode none)")
    assert want in log, log[-2000:]
    status = edgectl("--socket", str(tmp_path / "control.sock"), "status")
    assert f"batch up to {value['max_batch_size']};" in status.stdout, status.stdout
    assert d.terminate() == 0


def test_a_broken_override_file_fails_check_with_file_line_and_key(tmp_path, tiny_repo):
    state = tmp_path / "state"
    state.mkdir()
    (state / "tuned-batching.yaml").write_text(
        "schema: edged.tuned-batching/v1\nmodels:\n  chexnet-tiny:\n    sha256: " + "0" * 64 + "\n"
        "    modes:\n      none:\n        max_batch_size: 0\n        max_queue_delay_ms: 5\n")
    config = tmp_path / "edged.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(state), "cache_dir": str(tmp_path / "cache"),
                                      "model_repository": str(tiny_repo), "models": [{"name": "chexnet-tiny"}]}))
    run = subprocess.run([sys.executable, "-m", "edged", "check", "-c", str(config)], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert run.returncode == 2
    assert f"{state / 'tuned-batching.yaml'}:7: models.chexnet-tiny.modes.none.max_batch_size:" in run.stderr, \
        run.stderr


def _words(text: str, *anchors: str) -> list[str]:
    """The words just before each anchor in the line that has the first: 'measured 3 point(s), 15 from'."""
    line = next(ln for ln in text.splitlines() if ln.startswith(anchors[0]))
    words = line.split()
    return [words[words.index(a) - 1] for a in anchors[1:]]


def test_values_measured_with_another_onnx_are_ignored_with_a_warning(tmp_path, caplog):
    """A model update changes the ONNX: the old tune's values no longer describe it."""
    from edged.config.schema import PowerConfig, TelemetryConfig
    from edged.models.manifest import BatchingSpec
    from edged.power.runtime import PowerRuntime
    from edged.power.tuned import TunedOverrides

    path = tmp_path / "tuned-batching.yaml"
    path.write_text("schema: edged.tuned-batching/v1\nmodels:\n  m:\n    sha256: " + "a" * 64 + "\n"
                    "    modes:\n      none:\n        max_batch_size: 2\n        max_queue_delay_ms: 7\n")
    runtime = PowerRuntime(PowerConfig(), TelemetryConfig(), TunedOverrides.load(path))
    base = BatchingSpec(max_batch_size=8, max_queue_delay_ms=20, max_queue_size=64)
    same = runtime.batching(base, "m", "a" * 64)
    assert (same.max_batch_size, same.max_queue_delay_ms) == (2, 7)
    with caplog.at_level("WARNING", logger="edged.power"):
        other = runtime.batching(base, "m", "b" * 64)
    assert (other.max_batch_size, other.max_queue_delay_ms) == (8, 20)
    assert "measured with another ONNX of m" in caplog.text and "run edged tune again" in caplog.text
