"""The accuracy gate with real ONNX Runtime backends: identical, drifted and label-breaking candidates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edged.backends.base import Backend, BackendInfo, TensorSpec
from edged.backends.onnxruntime import OnnxRuntimeBackend
from edged.backends.tensorrt.gate import auroc, read_labels, run_gate, validation_inputs
from edged.models.manifest import AccuracyGate

GATE = AccuracyGate(max_abs_diff=0.05, mean_abs_diff=0.01, max_auroc_drop=0.01)


class Shifted(Backend):
    """A candidate whose raw outputs are the reference's plus ``shift`` (per label) — a bad engine."""

    def __init__(self, ref: Backend, shift):
        self.ref, self.shift = ref, np.asarray(shift, dtype=np.float32)

    def load(self):
        pass

    info = property(lambda self: BackendInfo("fake", "fp16", "gpu"))
    input_spec = property(lambda self: self.ref.input_spec)
    output_specs = property(lambda self: (TensorSpec("logits", (-1, 14), "float32"),))

    def infer(self, batch):
        return {"logits": self.ref.infer(batch)["logits"] + self.shift}


@pytest.fixture(scope="module")
def ref(tiny_model):
    b = OnnxRuntimeBackend(tiny_model / "model.onnx", threads=1)
    b.load()
    yield b
    b.close()


def test_auroc_matches_definition():
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert auroc(np.array([0.9, 0.8, 0.1]), np.array([0, 0, 1])) == 0.0
    assert auroc(np.array([0.5, 0.5, 0.5, 0.5]), np.array([0, 1, 0, 1])) == 0.5  # ties count half
    assert auroc(np.array([0.2, 0.3]), np.array([1, 1])) is None


def test_identical_backends_pass(ref, make_inputs):
    result = run_gate(ref, ref, make_inputs(10), GATE, label_names=tuple(f"L{i}" for i in range(14)))
    assert result.passed and result.max_abs_diff == 0 and "10 validation images" in result.reason


def test_drifted_weights_fail_with_numbers_in_the_reason(ref, tiny_model, tmp_path, make_inputs):
    model = onnx.load(str(tiny_model / "model.onnx"))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:  # a crude "bad INT8 calibration": 30 % weight noise
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.ndim >= 2:
            init.CopyFrom(numpy_helper.from_array((w * (1 + 0.3 * rng.standard_normal(w.shape))).astype(np.float32),
                                                  init.name))
    onnx.save(model, str(tmp_path / "noisy.onnx"))
    noisy = OnnxRuntimeBackend(tmp_path / "noisy.onnx", threads=1)
    noisy.load()
    result = run_gate(noisy, ref, make_inputs(12), GATE)
    assert not result.passed and "max abs diff" in result.reason and result.max_abs_diff > GATE.max_abs_diff


def test_small_drift_passes_and_one_label_over_the_limit_is_named(ref, make_inputs):
    x = make_inputs(8)
    assert run_gate(Shifted(ref, 0.001), ref, x, GATE).passed
    shift = np.zeros(14)
    shift[3] = 0.5  # raw logit +0.5 on one label: ~0.12 on the sigmoid score
    names = tuple(f"L{i}" for i in range(14))
    result = run_gate(Shifted(ref, shift), ref, x, GATE, label_names=names)
    assert not result.passed and "worst label L3" in result.reason
    assert max(result.per_label_max, key=result.per_label_max.get) == "L3"


def test_auroc_drop_fails_even_when_scores_stay_close(ref, make_inputs):
    """Reordering scores inside a narrow band keeps diffs small but breaks ranking."""
    x = make_inputs(20)
    raw = ref.infer(x)["logits"]
    labels = np.full((20, 14), np.nan)
    labels[:, 0] = (raw[:, 0] > np.median(raw[:, 0])).astype(float)  # label 0 perfectly ranked by the reference

    class Scrambled(Shifted):
        def infer(self, batch):
            out = self.ref.infer(batch)["logits"].copy()
            out[:, 0] = -out[:, 0] * 0.01  # tiny values, reversed order
            return {"logits": out}

    lenient = AccuracyGate(max_abs_diff=1.0, mean_abs_diff=1.0, max_auroc_drop=0.01)
    result = run_gate(Scrambled(ref, 0), ref, x, lenient, labels=labels)
    assert not result.passed and result.auroc_drop == pytest.approx(1.0) and "AUROC drop" in result.reason
    assert run_gate(ref, ref, x, lenient, labels=labels).auroc_drop == 0.0


def test_labels_csv_and_synthetic_fallback(tmp_path):
    files = [tmp_path / f"img{i}.dcm" for i in range(3)]
    (tmp_path / "labels.csv").write_text("file,Effusion,Mass\nimg0.dcm,1,0\nimg2.dcm,0,\nunknown.dcm,1,1\n")
    got = read_labels(tmp_path, files, ("Atelectasis", "Effusion", "Mass"))
    assert np.array_equal(np.isnan(got), [[True, False, False], [True, True, True], [True, False, True]])
    assert got[0, 1] == 1 and got[0, 2] == 0 and got[2, 1] == 0
    assert read_labels(tmp_path / "nowhere", files, ("Mass",)) is None
    x, kind = validation_inputs([], None, (-1, 3, 8, 8), synthetic=5)
    assert kind == "synthetic" and x.shape == (5, 3, 8, 8)
    x, kind = validation_inputs(files, lambda p: np.full((3, 8, 8), int(Path(p).stem[-1]), np.float32), (-1, 3, 8, 8))
    assert kind == "images" and x[:, 0, 0, 0].tolist() == [0, 1, 2]


class Moved(Backend):
    """A detector candidate whose boxes are the reference's moved by ``dx`` input pixels."""

    def __init__(self, ref: Backend, dx: float):
        self.ref, self.dx = ref, dx

    def load(self):
        pass

    info = property(lambda self: BackendInfo("fake", "int8", "dla0"))
    input_spec = property(lambda self: self.ref.input_spec)
    output_specs = property(lambda self: self.ref.output_specs)

    def infer(self, batch):
        out = dict(self.ref.infer(batch))
        out["detections"] = out["detections"].copy()
        out["detections"][:, 0] += self.dx
        return out


def test_detection_outputs_are_compared_as_matched_boxes(tmp_path):
    """The gate decodes both runs into boxes: a small shift passes, a shift a consumer would see fails,
    and the reason names the detection output (raw tensors were compared before)."""
    from edged.models.manifest import load_manifest
    from edged.models.synth import write_model

    write_model("detector-tiny", tmp_path / "det")
    model = load_manifest(tmp_path / "det")
    ref = OnnxRuntimeBackend(model.onnx_path, threads=1)
    ref.load()
    inputs = np.random.default_rng(3).random((6, 3, 96, 160), dtype=np.float32)
    outputs = model.manifest.decoded_outputs
    same = run_gate(ref, ref, inputs, GATE, outputs=outputs)
    assert same.passed and same.max_abs_diff == 0 and set(same.per_label_max) == {"objects/score", "objects/box"}
    moved = run_gate(Moved(ref, 6.0), ref, inputs, GATE, outputs=outputs)
    assert not moved.passed and "objects/box" in moved.reason and moved.per_label_max["objects/box"] > 0.05
    ref.close()
