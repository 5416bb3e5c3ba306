"""Contracts the backend seam's docstring makes: a model that fails to load is reported and the
others are served (exit 2 when none is left); infer and warmup are safe from any thread."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from edged.backends.onnxruntime import OnnxRuntimeBackend
from edged.backends.worker import WorkerBackend
from helpers import REPO, send_file, small_cr, write_config


def test_a_model_that_fails_to_load_is_reported_and_the_others_serve(daemon_factory, collector, tmp_path, tiny_repo):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo / "chexnet-tiny", repo / "chexnet-tiny")
    shutil.copytree(tiny_repo / "chexnet-tiny", repo / "broken")
    manifest = (repo / "broken" / "model.yaml").read_text().replace("name: chexnet-tiny", "name: broken")
    (repo / "broken" / "model.yaml").write_text(manifest)
    (repo / "broken" / "model.onnx").write_bytes(b"not the pinned model")
    d = daemon_factory(repo=repo, models=[{"name": "broken"}, {"name": "chexnet-tiny"}]).start()
    collector.wait_for(lambda c: any(p.get("state") == "online" for p in c.of("status")))
    status = [p for p in collector.of("status") if p.get("state") == "online"][-1]
    assert [m["name"] for m in status["models"]] == ["chexnet-tiny"]
    (gone,) = status["unavailable"]
    assert gone["name"] == "broken" and "sha256" in gone["reason"]
    collector.wait_for(lambda c: any(e["reason"] == "load_failed" for e in c.events("backend")))
    assert send_file(d.port, small_cr(tmp_path / "cr.dcm")) == 0x0000
    collector.wait_for(lambda c: len(c.results()) == 1)
    assert d.terminate() == 0
    assert "model broken is not served" in d.log.read_text()


def test_no_model_left_exits_2_so_systemd_stops_restarting(tmp_path, tiny_repo):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo / "chexnet-tiny", repo / "chexnet-tiny")
    (repo / "chexnet-tiny" / "model.onnx").write_bytes(b"altered")
    cfg = write_config(tmp_path / "edged.yaml", node_id="n", state_dir=str(tmp_path / "s"), cache_dir=str(tmp_path / "c"),
                       model_repository=str(repo), models=[{"name": "chexnet-tiny"}],
                       dicom={"bind": "127.0.0.1", "port": 0}, mqtt={"enabled": False},
                       power={"control_socket": str(tmp_path / "ctl.sock")})
    r = subprocess.run([sys.executable, "-m", "edged", "run", "-c", str(cfg)], capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.returncode == 2, r.stderr
    assert "no model could be loaded: chexnet-tiny:" in r.stderr
    assert "RestartPreventExitStatus=2" in (REPO / "systemd" / "edged.service").read_text()


@pytest.mark.parametrize("kind", ["in-process", "worker"])
def test_infer_and_warmup_from_two_threads_at_once(kind, tiny_repo):
    """The batcher serves while the control thread re-warms after a power-mode change."""
    model = tiny_repo / "chexnet-tiny" / "model.onnx"
    backend = OnnxRuntimeBackend(model, threads=1) if kind == "in-process" else \
        WorkerBackend("onnxruntime", {"model": str(model), "threads": 1})
    backend.load()
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    want = backend.infer(x)["logits"]
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            for _ in range(20):
                np.testing.assert_allclose(backend.infer(x)["logits"], want, rtol=1e-5, atol=1e-5)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def rewarm() -> None:
        try:
            for batch in (1, 4, 8, 2):
                backend.warmup(batch, (3, 64, 64))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=serve), threading.Thread(target=rewarm), threading.Thread(target=serve)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    backend.close()
    assert not errors, errors
