"""Deterministic, seeded DenseNet reference models (ONNX built with numpy, no torch).

Trained CheXNet weights cannot be redistributed or fetched on a device, yet the daemon, the
TensorRT builder and the benchmarks need a model with the real architecture and real cost. So we
generate one: the exact DenseNet-121/CheXNet graph with weights drawn from a seeded generator.
The weights are *untrained* — scores mean nothing clinically (manifests say ``clinical: false``).

Two properties matter more than anything else here:

* **Byte-for-byte determinism.** The manifest pins the file's sha256, so every build on every
  machine must serialize identically: fixed node/initializer names (torchvision's, so real
  weights map 1:1), fixed producer strings, a pinned IR version, no timestamps.
* **Sane activations.** Scores on real radiographs must not saturate at 0/1, otherwise tests and
  accuracy gates (FP16/INT8 vs FP32) compare constants. He-scaled convolutions keep the second
  moment roughly constant through BN(identity)-ReLU-conv; the classifier is scaled to the
  feature magnitude and its rows are centred so that logits follow image content rather than
  the (always positive) mean of the pooled features.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# Pinned instead of onnx.IR_VERSION so upgrading the onnx package does not change the bytes
# (and so older JetPack ONNX Runtime / TensorRT parsers still load the file). IR 8 = opset 17.
IR_VERSION = 8
PRODUCER = "edged.models.synth"
PRODUCER_VERSION = "1"  # bump when the generated graph or the weight recipe changes

# ChestX-ray14 labels in the order of CheXNet's classifier outputs.
CHEXNET_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

_BN_EPS = 1e-5
# Classifier scale (logit std per unit of feature std). Pooled features of a random DenseNet are
# ~0.99 correlated between images, so image-dependence is a small part of each logit: at 0.8 the
# logits of real radiographs spread ~0.9 across labels and ~0.25 across images while sigmoid
# stays within ~(0.07, 0.9). Larger saturates labels; smaller makes images indistinguishable.
_LOGIT_STD = 0.8
# Per-label bias range: distinct base rates per label without drowning the image signal.
_BIAS_LIMIT = 0.25


@dataclass(frozen=True)
class DenseNetSpec:
    """Hyper-parameters of a torchvision-style DenseNet-BC."""

    growth: int
    blocks: tuple[int, ...]
    init_features: int
    image_size: int
    bn_size: int = 4
    compression: float = 0.5
    classes: int = len(CHEXNET_LABELS)
    # extra classifier heads on the same pooled features: (output name, decoder, labels)
    heads: tuple[tuple[str, str, tuple[str, ...]], ...] = ()


KINDS: dict[str, DenseNetSpec] = {
    "densenet121": DenseNetSpec(growth=32, blocks=(6, 12, 24, 16), init_features=64, image_size=224),
    # Same family, ~1 ms per image: for tests that need a real graph but not real cost.
    "tiny": DenseNetSpec(growth=4, blocks=(2, 2), init_features=8, image_size=64),
    # The tiny model with a second, softmax head: a two-output model for the multi-output seam.
    "tiny-2head": DenseNetSpec(growth=4, blocks=(2, 2), init_features=8, image_size=64,
                               heads=(("view", "softmax", ("PA", "AP", "LATERAL")),)),
}


@dataclass(frozen=True)
class DetectorSpec:
    """A YOLO-style single-stage detector: a plain conv backbone (stride 2 per stage), one 1×1 head
    per output stride, decoded in the graph to (N, 4 + classes, anchors) with boxes in input
    pixels, as YOLOv8 exports are. Seeded weights: its detections are noise of realistic cost."""

    width: int  # input width and height (multiples of the largest stride)
    height: int
    channels: tuple[int, ...]  # per stage; each stage halves the resolution
    strides: tuple[int, ...] = (8, 16, 32)  # stages whose output feeds a head
    labels: tuple[str, ...] = ("person", "bicycle", "car", "motorcycle", "bus", "truck", "cat", "dog")
    class_bias: float = -3.0  # sigmoid(-3) = 0.05: most anchors stay below the score threshold
    threshold: float = 0.2  # the manifest's score threshold: a handful of noise boxes per frame


DETECTORS: dict[str, DetectorSpec] = {
    # ~3.4 GMAC per 640x384 frame: the cost class of the small YOLO/CenterFace models people run
    "detector": DetectorSpec(640, 384, (32, 64, 96, 192, 384)),
    # same graph family, ~1 ms: tests of scheduling and batching
    "detector-tiny": DetectorSpec(160, 96, (8, 8, 16, 16, 16), threshold=0.35),
}

# Manifest name per kind when write_model() writes a model.yaml next to the ONNX file.
_MANIFEST_NAMES = {"densenet121": "chexnet", "tiny": "chexnet-tiny", "tiny-2head": "chexnet-2head",
                   "detector": "detector", "detector-tiny": "detector-tiny"}


class _GraphBuilder:
    """Accumulates nodes and float32 initializers; names follow torchvision's state_dict keys."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def _uniform(self, shape: tuple[int, ...], limit: float) -> np.ndarray:
        # rng.random() (53-bit doubles from the bit stream) has been stable across numpy
        # releases, unlike the ziggurat behind standard_normal; hence uniform, not normal.
        return ((self.rng.random(shape) * 2.0 - 1.0) * limit).astype(np.float32)

    def _init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def _int64(self, name: str, values: list[int]) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, output: str | None = None, **attrs) -> str:
        """Add one node; its output tensor is named after the node unless ``output`` is given."""
        output = output or name
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def conv(self, x: str, name: str, c_in: int, c_out: int, k: int, stride: int = 1) -> str:
        """Bias-free conv, He-uniform (variance 2/fan_in) to preserve scale through ReLU."""
        fan_in = c_in * k * k
        w = self._init(f"{name}.weight", self._uniform((c_out, c_in, k, k), np.sqrt(6.0 / fan_in)))
        pad = k // 2
        return self.node("Conv", [x, w], name, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)

    def bn_relu(self, x: str, name: str, relu_name: str, channels: int) -> str:
        """Inference BN with identity statistics: real graph cost, no arbitrary rescaling."""
        ones, zeros = np.ones(channels, np.float32), np.zeros(channels, np.float32)
        params = [
            self._init(f"{name}.{key}", value)
            for key, value in (("weight", ones), ("bias", zeros), ("running_mean", zeros), ("running_var", ones))
        ]
        y = self.node("BatchNormalization", [x, *params], name, epsilon=_BN_EPS)
        return self.node("Relu", [y], relu_name)

    def classifier(self, x: str, features: int, classes: int, name: str = "classifier", output: str = "logits") -> str:
        """Gemm whose rows sum to zero, so the logits respond to which channels fire rather than to
        the overall level of the (non-negative) pooled features, which barely varies by image."""
        w = self._uniform((classes, features), np.sqrt(3.0 / features)).astype(np.float64)
        # math.fsum is exactly rounded on every platform; numpy's reductions may sum in a
        # CPU-dependent order, and one ulp of difference would break the pinned sha256.
        w -= np.array([[math.fsum(row) / features] for row in w])
        w *= _LOGIT_STD
        b = self._uniform((classes,), _BIAS_LIMIT)
        inputs = [x, self._init(f"{name}.weight", w), self._init(f"{name}.bias", b)]
        return self.node("Gemm", inputs, name, output=output, transB=1)


def _densenet(spec: DenseNetSpec, seed: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    g = _GraphBuilder(seed)
    x = g.conv("image", "features.conv0", 3, spec.init_features, 7, stride=2)
    x = g.bn_relu(x, "features.norm0", "features.relu0", spec.init_features)
    x = g.node("MaxPool", [x], "features.pool0", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    channels = spec.init_features
    for b, layers in enumerate(spec.blocks, start=1):
        block = f"features.denseblock{b}"
        outputs = [x]
        for i in range(1, layers + 1):
            layer = f"{block}.denselayer{i}"
            cat = outputs[0] if len(outputs) == 1 else g.node("Concat", outputs, f"{layer}.concat", axis=1)
            c_in, width = channels + (i - 1) * spec.growth, spec.bn_size * spec.growth
            y = g.bn_relu(cat, f"{layer}.norm1", f"{layer}.relu1", c_in)
            y = g.conv(y, f"{layer}.conv1", c_in, width, 1)
            y = g.bn_relu(y, f"{layer}.norm2", f"{layer}.relu2", width)
            outputs.append(g.conv(y, f"{layer}.conv2", width, spec.growth, 3))
        x = g.node("Concat", outputs, f"{block}.concat", axis=1)
        channels += layers * spec.growth
        if b < len(spec.blocks):
            trans = f"features.transition{b}"
            reduced = int(channels * spec.compression)
            x = g.bn_relu(x, f"{trans}.norm", f"{trans}.relu", channels)
            x = g.conv(x, f"{trans}.conv", channels, reduced, 1)
            x = g.node("AveragePool", [x], f"{trans}.pool", kernel_shape=[2, 2], strides=[2, 2])
            channels = reduced
    x = g.bn_relu(x, "features.norm5", "features.relu5", channels)
    x = g.node("GlobalAveragePool", [x], "pool")
    x = g.node("Flatten", [x], "flatten", axis=1)
    g.classifier(x, channels, spec.classes)
    for output, _, labels in spec.heads:
        g.classifier(x, channels, len(labels), name=f"head_{output}", output=output)
    return g.nodes, g.inits


def _detector(spec: DetectorSpec, seed: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    g = _GraphBuilder(seed)
    x, c_in, stride, heads = "image", 3, 1, []
    classes = len(spec.labels)
    for i, c_out in enumerate(spec.channels):
        stride *= 2
        x = g.node("Relu", [g.conv(x, f"backbone.{i}.down", c_in, c_out, 3, stride=2)], f"backbone.{i}.relu0")
        x = g.node("Relu", [g.conv(x, f"backbone.{i}.conv", c_out, c_out, 3)], f"backbone.{i}.relu1")
        c_in = c_out
        if stride in spec.strides:
            heads.append((x, c_out, stride))
    parts = []
    for x, c, stride in heads:
        h, w = spec.height // stride, spec.width // stride
        name = f"head.s{stride}"
        weight = g._init(f"{name}.weight", g._uniform((4 + classes, c, 1, 1), np.sqrt(3.0 / c)))
        bias = g._init(f"{name}.bias", np.array([0.0] * 4 + [spec.class_bias] * classes, np.float32))
        t = g.node("Conv", [x, weight, bias], name, kernel_shape=[1, 1])
        t = g.node("Reshape", [t, g._int64(f"{name}.shape", [0, 4 + classes, h * w])], f"{name}.flat")
        t = g.node("Sigmoid", [t], f"{name}.sigmoid")
        xy = g.node("Slice", [t, g._int64(f"{name}.xy0", [0]), g._int64(f"{name}.xy1", [2]),
                              g._int64(f"{name}.axis", [1])], f"{name}.xy")
        wh = g.node("Slice", [t, g._int64(f"{name}.wh0", [2]), g._int64(f"{name}.wh1", [4]),
                              g._int64(f"{name}.axis2", [1])], f"{name}.wh")
        cls = g.node("Slice", [t, g._int64(f"{name}.c0", [4]), g._int64(f"{name}.c1", [4 + classes]),
                               g._int64(f"{name}.axis3", [1])], f"{name}.cls")
        ys, xs = np.divmod(np.arange(h * w, dtype=np.float32), np.float32(w))
        grid = g._init(f"{name}.grid", np.stack([xs, ys])[np.newaxis])
        xy = g.node("Mul", [g.node("Add", [xy, grid], f"{name}.cell"), g._init(f"{name}.stride", np.float32([stride]))],
                    f"{name}.centre")
        wh = g.node("Mul", [wh, g._init(f"{name}.size", np.float32([8 * stride]))], f"{name}.box_size")
        parts.append(g.node("Concat", [xy, wh, cls], f"{name}.out", axis=1))
    g.node("Concat", parts, "detections", axis=2)
    return g.nodes, g.inits


def build_model(kind: str, seed: int = 0) -> onnx.ModelProto:
    """The ``kind`` DenseNet with seeded weights: input ``image`` (N,3,S,S), output ``logits``.

    Raw logits, no sigmoid: the daemon decodes them as the manifest says (``decode: sigmoid``) so
    that one code path serves every model. Extra heads (``spec.heads``) add one output each.
    Detector kinds (:data:`DETECTORS`) output ``detections`` (N, 4 + classes, anchors) instead.
    """
    if kind in DETECTORS:
        return _build_detector(kind, seed)
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join([*KINDS, *DETECTORS])}")
    spec = KINDS[kind]
    nodes, inits = _densenet(spec, seed)
    size = spec.image_size
    graph = helper.make_graph(
        nodes,
        f"{kind}_seed{seed}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", spec.classes])]
        + [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", len(labels)]) for out, _, labels in spec.heads],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name=PRODUCER,
        producer_version=PRODUCER_VERSION,
        doc_string=f"{kind}, seed {seed}: seeded UNTRAINED weights, NOT for clinical use",
    )
    helper.set_model_props(model, {"edged.synth.kind": kind, "edged.synth.seed": str(seed)})
    return model


def _build_detector(kind: str, seed: int) -> onnx.ModelProto:
    spec = DETECTORS[kind]
    nodes, inits = _detector(spec, seed)
    anchors = sum((spec.height // s) * (spec.width // s) for s in spec.strides)
    graph = helper.make_graph(
        nodes, f"{kind}_seed{seed}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, spec.height, spec.width])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["N", 4 + len(spec.labels), anchors])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name=PRODUCER, producer_version=PRODUCER_VERSION,
                              doc_string=f"{kind}, seed {seed}: seeded UNTRAINED weights, detections are noise")
    helper.set_model_props(model, {"edged.synth.kind": kind, "edged.synth.seed": str(seed)})
    return model


def _detector_manifest(kind: str, seed: int, sha256: str) -> dict:
    spec = DETECTORS[kind]
    return {
        "schema": "edged.model/v1", "name": _MANIFEST_NAMES[kind], "version": f"0.1.0-seeded{seed}",
        "description": f"Generated {kind} (seed {seed}), seeded untrained weights: detections are noise.",
        "clinical": False, "sources": ["camera"],
        "onnx": {"path": "model.onnx", "sha256": sha256},
        "input": {"name": "image", "layout": "NCHW", "height": spec.height, "width": spec.width, "channels": 3},
        "preprocess": {"resize": "linear", "keep_aspect": True, "mean": [0.0], "std": [1.0], "color": "rgb"},
        "outputs": [{"name": "objects", "decode": "yolo", "tensors": ["detections"], "labels": list(spec.labels),
                     "score_threshold": spec.threshold, "nms_iou": 0.45, "max_detections": 50}],
        "batching": {"max_batch_size": 8, "max_queue_delay_ms": 10, "max_queue_size": 16},
    }


def _manifest(kind: str, seed: int, sha256: str) -> dict:
    if kind in DETECTORS:
        return _detector_manifest(kind, seed, sha256)
    spec = KINDS[kind]
    return {
        "schema": "edged.model/v1",
        "name": _MANIFEST_NAMES[kind],
        "version": f"0.1.0-seeded{seed}",
        "description": f"Generated {kind} (seed {seed}) with seeded, untrained weights; NOT for clinical use.",
        "clinical": False,
        "onnx": {"path": "model.onnx", "sha256": sha256},
        "input": {
            "name": "image",
            "layout": "NCHW",
            "height": spec.image_size,
            "width": spec.image_size,
            "channels": 3,
            "dtype": "float32",
        },
        **_outputs(spec),
    }


def _outputs(spec: DenseNetSpec) -> dict:
    first = {"name": "logits", "decode": "sigmoid", "labels": list(CHEXNET_LABELS)}
    if not spec.heads:
        return {"output": first}
    return {"outputs": [first, *({"name": out, "decode": dec, "labels": list(labels)} for out, dec, labels in spec.heads)]}


def write_model(kind: str, folder: Path, seed: int = 0, manifest: bool = True) -> Path:
    """Write ``folder/model.onnx`` (and ``folder/model.yaml`` pinning its sha256 if ``manifest``).

    Returns the ONNX path. The file is written under a temporary name and renamed so a daemon
    watching the folder never sees a half-written model.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = build_model(kind, seed).SerializeToString()
    path = folder / "model.onnx"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    if manifest:
        text = yaml.safe_dump(_manifest(kind, seed, hashlib.sha256(data).hexdigest()), sort_keys=False)
        (folder / "model.yaml").write_text(f"# Generated by {PRODUCER}; do not edit.\n{text}", encoding="utf-8")
    return path
