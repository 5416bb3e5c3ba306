"""Fixtures for the TensorRT / worker tests.

There is no GPU and no TensorRT here: ``tests/doubles`` holds recording doubles of ``tensorrt``
and ``pycuda`` that subprocesses get through PYTHONPATH (``doubles_env``) and this process
through ``trt`` (imported from the same folder). Everything else is real: ONNX Runtime,
processes, /dev/shm, files and locks. The Jetson Pythons are stood in for by pyenv's 3.6 and
3.8 (``tools/setup-compat-pythons.sh`` gives them numpy).
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOUBLES = ROOT / "tests" / "doubles"
PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"


def _compat_python(minor: str) -> str:
    """The pyenv interpreter for ``minor`` (e.g. "3.6") with numpy, or skip saying what is missing.

    ``3.8-numpy1.24`` is the venv ``tools/setup-compat-pythons.sh`` makes: JetPack 5.1's Python
    after ``pip3 install -U numpy``.
    """
    if "-" in minor:
        exe = str(PYENV.parent / "edged-compat" / f"py{minor}" / "bin" / "python")
        if not os.path.exists(exe):
            pytest.skip(f"{exe} is missing; run tools/setup-compat-pythons.sh")
        return exe
    found = sorted(glob.glob(str(PYENV / f"{minor}.*" / "bin" / "python")))
    if not found:
        pytest.skip(f"Python {minor} is not installed under {PYENV} (stand-in for the Jetson system Python)")
    exe = found[-1]
    probe = subprocess.run([exe, "-c", "import numpy"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"{exe} has no numpy; run tools/setup-compat-pythons.sh")
    return exe


def _doubles_env(version: str = "10.3", **extra: str) -> dict[str, str]:
    """Environment for a child that should see the tensorrt/pycuda doubles of ``version``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
    env["PYTHONPATH"] = os.pathsep.join([str(DOUBLES), str(ROOT)])
    env["EDGED_TRT_DOUBLE"] = version
    env.update(extra)
    return env


def _plain_env(**extra: str) -> dict[str, str]:
    """Environment without the doubles: tensorrt is not importable, as on this machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_") and k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A small generated DenseNet (64x64, 14 labels) with its manifest; the folder path."""
    folder = tmp_path_factory.mktemp("models") / "tiny"
    from edged.models import synth

    synth.write_model("tiny", folder)
    return folder


@pytest.fixture
def model_copy(tiny_model, tmp_path) -> Path:
    """A private copy of the tiny model folder (tests may edit its manifest)."""
    dst = tmp_path / "model"
    dst.mkdir()
    for f in tiny_model.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.fixture
def trt():
    """The tensorrt double in this process, version switched per test with ``trt.use(...)``.

    Imported for the test only and removed afterwards, so no other test of the session can
    mistake the double for an installed TensorRT.
    """
    sys.path.insert(0, str(DOUBLES))
    import tensorrt

    assert "doubles" in tensorrt.__file__, "a real tensorrt module shadows the double"
    tensorrt.NETWORK = None
    try:
        yield tensorrt
    finally:
        sys.path.remove(str(DOUBLES))
        for name in [m for m in sys.modules if m.split(".")[0] in ("tensorrt", "pycuda")]:
            del sys.modules[name]


@pytest.fixture
def events():
    """A list collecting ``on_event`` calls as (kind, fields)."""
    got: list[tuple[str, dict]] = []

    def on_event(kind: str, fields: dict) -> None:
        got.append((kind, fields))

    on_event.got = got  # type: ignore[attr-defined]
    return on_event


def _inputs(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


# Helpers as fixtures (test modules cannot import each other without __init__.py files).
@pytest.fixture
def compat_python():
    return _compat_python


@pytest.fixture
def doubles_env():
    return _doubles_env


@pytest.fixture
def plain_env():
    return _plain_env


@pytest.fixture
def make_inputs():
    return _inputs
