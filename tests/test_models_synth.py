"""The seeded reference models: deterministic bytes, valid graphs, sane scores, pinned manifest.

The pinned sha256 in engines/chexnet/model.yaml is only meaningful if generation is
byte-for-byte reproducible, and the model is only useful for tests/benchmarks/accuracy gates
if its scores on real radiographs are neither saturated nor constant; both are checked here.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edged.models.manifest import load_manifest
from edged.models.synth import CHEXNET_LABELS, KINDS, build_model, write_model

REPO = Path(__file__).resolve().parent.parent
CHEXNET_DIR = REPO / "engines" / "chexnet"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def _session(model: onnx.ModelProto | bytes) -> ort.InferenceSession:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _radiograph(name: str, size: int) -> np.ndarray:
    """(1,3,size,size) tensor: stored window, MONOCHROME1 inverted, area resize, ImageNet norm.

    Deliberately simpler than edged's pipeline: this checks the model, not the preprocessing.
    """
    pydicom = pytest.importorskip("pydicom")
    cv2 = pytest.importorskip("cv2")
    path = pydicom.data.get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not available (install pydicom-data)")
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.astype(np.float32)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    img = np.clip((pixels - (center - width / 2)) / width, 0.0, 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        img = 1.0 - img
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return ((np.stack([img] * 3) - IMAGENET_MEAN) / IMAGENET_STD)[None].astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture(scope="module")
def chexnet_bytes() -> bytes:
    return build_model("densenet121").SerializeToString()


def test_build_is_byte_for_byte_deterministic() -> None:
    assert build_model("tiny").SerializeToString() == build_model("tiny").SerializeToString()
    assert build_model("tiny", seed=1).SerializeToString() != build_model("tiny").SerializeToString()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_graph_passes_checker_and_has_the_served_interface(kind: str, chexnet_bytes: bytes) -> None:
    model = onnx.load_from_string(chexnet_bytes) if kind == "densenet121" else build_model(kind)
    onnx.checker.check_model(model, full_check=True)
    size = KINDS[kind].image_size
    (inp,), (out, *heads) = model.graph.input, model.graph.output
    assert inp.name == "image" and out.name == "logits"
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["N", 3, size, size]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["N", 14]
    assert [(h.name, [d.dim_param or d.dim_value for d in h.type.tensor_type.shape.dim]) for h in heads] == \
        [(name, ["N", len(labels)]) for name, _, labels in KINDS[kind].heads]
    assert model.opset_import[0].version == 17
    # The daemon applies the manifest's activation; a sigmoid in the graph would apply it twice.
    assert not {"Sigmoid", "Softmax"} & {n.op_type for n in model.graph.node}
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in model.graph.initializer)


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model("resnet50")


def test_tiny_runs_and_is_batch_independent() -> None:
    session = _session(build_model("tiny"))
    batch = np.random.default_rng(7).standard_normal((4, 3, 64, 64)).astype(np.float32)
    (together,) = session.run(None, {"image": batch})
    assert together.shape == (4, 14) and together.dtype == np.float32
    alone = np.concatenate([session.run(None, {"image": batch[i : i + 1]})[0] for i in range(4)])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)
    assert np.ptp(together, axis=0).max() > 1e-3, "different inputs must give different logits"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_write_model_manifest_validates_and_pins_the_file(kind: str, tmp_path: Path) -> None:
    path = write_model(kind, tmp_path / kind)
    loaded = load_manifest(tmp_path / kind)
    loaded.verify_onnx()
    assert loaded.onnx_path == path.resolve()
    manifest = loaded.manifest
    assert manifest.clinical is False
    first, *heads = manifest.decoded_outputs
    assert first.labels == CHEXNET_LABELS and first.decode == "sigmoid"
    assert [(h.name, h.decode, h.labels) for h in heads] == list(KINDS[kind].heads)
    assert (manifest.input.height, manifest.input.width) == (KINDS[kind].image_size,) * 2
    assert not list((tmp_path / kind).glob("*.tmp"))


def test_two_head_model_shares_the_tiny_trunk_and_adds_a_softmax_head() -> None:
    """The first head is the tiny model's classifier, bit for bit; the second is its own."""
    x = np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype(np.float32)
    logits, view = _session(build_model("tiny-2head")).run(None, {"image": x})
    (tiny,) = _session(build_model("tiny")).run(None, {"image": x})
    np.testing.assert_array_equal(logits, tiny)
    assert view.shape == (2, 3) and np.ptp(view) > 1e-3


def test_write_model_without_manifest(tmp_path: Path) -> None:
    write_model("tiny", tmp_path, manifest=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_chexnet_manifest_pins_the_generated_model(chexnet_bytes: bytes) -> None:
    loaded = load_manifest(CHEXNET_DIR)
    assert hashlib.sha256(chexnet_bytes).hexdigest() == loaded.sha256, (
        "edged.models.synth no longer reproduces the pinned chexnet model: re-pin engines/chexnet/model.yaml"
    )
    manifest = loaded.manifest
    assert manifest.name == "chexnet" and manifest.clinical is False
    assert manifest.output.labels == CHEXNET_LABELS
    assert (manifest.input.name, manifest.output.name) == ("image", "logits")
    assert (manifest.batching.max_batch_size, manifest.batching.max_queue_size) == (8, 64)


def test_chexnet_scores_on_a_real_radiograph_are_not_saturated(chexnet_bytes: bytes) -> None:
    session = _session(chexnet_bytes)
    chest = _sigmoid(session.run(None, {"image": _radiograph("RG1_UNCR.dcm", 224)})[0][0])
    other = _sigmoid(session.run(None, {"image": _radiograph("RG3_UNCR.dcm", 224)})[0][0])
    assert np.all((chest > 0.02) & (chest < 0.98)), chest
    assert chest.std() > 0.05, f"labels barely differ: {chest}"
    assert np.abs(chest - other).max() > 0.02, "scores do not depend on the image"


def test_make_models_generates_checks_and_refuses_a_wrong_pin(tmp_path: Path) -> None:
    """Run the CLI as users do (from another cwd) against a scratch copy of the repository."""
    repo = tmp_path / "engines"
    (repo / "chexnet").mkdir(parents=True)
    shutil.copy(CHEXNET_DIR / "model.yaml", repo / "chexnet" / "model.yaml")

    def run(*args: str) -> tuple[int, str]:
        """(exit code, stdout + stderr) of the CLI run from an unrelated cwd."""
        cmd = [sys.executable, str(REPO / "tools" / "make_models.py"), "--repo", str(repo), "--only", "chexnet", *args]
        done = subprocess.run(cmd, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout + done.stderr

    assert run("--check") == (1, f"chexnet: {repo / 'chexnet' / 'model.onnx'} missing\n")
    code, out = run()
    assert code == 0 and "wrote" in out, out
    assert run("--check") == (0, f"chexnet: {repo / 'chexnet' / 'model.onnx'} ok\n")
    (repo / "chexnet" / "model.onnx").write_bytes(b"not a model")
    assert run("--check") == (1, f"chexnet: {repo / 'chexnet' / 'model.onnx'} differs\n")

    manifest = repo / "chexnet" / "model.yaml"
    pinned = load_manifest(manifest).sha256
    manifest.write_text(manifest.read_text().replace(pinned, "ab" * 32))
    code, out = run("--force")
    assert code == 2 and "re-pin" in out, out
    assert (repo / "chexnet" / "model.onnx").read_bytes() == b"not a model"
