"""The seeded reference crop classifier: a MobileNet-style (depthwise-separable) two-class network
on 128×128×3 crops, built like the other reference models (:mod:`edged.models.synth`).

It is the secondary classifier of tests and benchmarks (detect → crop → classify): the size and
kind of network the source study classified face crops with, with seeded, untrained weights, so
its two scores say nothing about the crop. Byte-for-byte determinism is the same contract as for
the DenseNet (pinned sha256 in the manifest); generation takes well under a second (~0.2 M
weights). No identity model ships, and none is generated: recognising who someone is, is
biometric data (see README, "Secondary classifiers").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper

from edged.models.synth import IR_VERSION, OPSET, PRODUCER, PRODUCER_VERSION, _GraphBuilder, build_model


@dataclass(frozen=True)
class CropClassifierSpec:
    size: int = 128
    stem: int = 16
    # (output channels, stride) of each depthwise-separable block, MobileNet v1's pattern at 1/4 width
    blocks: tuple[tuple[int, int], ...] = ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1))
    labels: tuple[str, ...] = ("class_a", "class_b")


CLASSIFIERS = {"crop-classifier": CropClassifierSpec()}
MANIFEST_NAMES = {"crop-classifier": "cropcls"}


def _depthwise(g: _GraphBuilder, x: str, name: str, c: int, stride: int) -> str:
    w = g._init(f"{name}.weight", g._uniform((c, 1, 3, 3), np.sqrt(6.0 / 9)))
    return g.node("Conv", [x, w], name, kernel_shape=[3, 3], strides=[stride, stride], pads=[1] * 4, group=c)


def _graph(spec: CropClassifierSpec, seed: int) -> tuple[list, list]:
    g = _GraphBuilder(seed)
    x = g.conv("image", "stem.conv", 3, spec.stem, 3, stride=2)
    x = g.bn_relu(x, "stem.bn", "stem.relu", spec.stem)
    c = spec.stem
    for i, (out, stride) in enumerate(spec.blocks):
        x = g.bn_relu(_depthwise(g, x, f"blocks.{i}.dw", c, stride), f"blocks.{i}.dw_bn", f"blocks.{i}.dw_relu", c)
        x = g.bn_relu(g.conv(x, f"blocks.{i}.pw", c, out, 1), f"blocks.{i}.pw_bn", f"blocks.{i}.pw_relu", out)
        c = out
    x = g.node("GlobalAveragePool", [x], "pool")
    x = g.node("Flatten", [x], "flatten", axis=1)
    g.classifier(x, c, len(spec.labels))
    return g.nodes, g.inits


def build_classifier(kind: str, seed: int = 0) -> onnx.ModelProto:
    """Input ``image`` (N, 3, 128, 128), output raw ``logits`` (N, 2) (the manifest decodes softmax)."""
    spec = CLASSIFIERS[kind]
    nodes, inits = _graph(spec, seed)
    graph = helper.make_graph(
        nodes, f"{kind}_seed{seed}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, spec.size, spec.size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(spec.labels)])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name=PRODUCER, producer_version=PRODUCER_VERSION,
                              doc_string=f"{kind}, seed {seed}: seeded UNTRAINED weights, its classes mean nothing")
    helper.set_model_props(model, {"edged.synth.kind": kind, "edged.synth.seed": str(seed)})
    return model


def build_any(kind: str, seed: int = 0) -> onnx.ModelProto:
    """Every generated reference model by kind: the crop classifiers here, the rest in synth."""
    return build_classifier(kind, seed) if kind in CLASSIFIERS else build_model(kind, seed)


def manifest(kind: str, seed: int, sha256: str) -> dict:
    spec = CLASSIFIERS[kind]
    return {
        "schema": "edged.model/v1", "name": MANIFEST_NAMES[kind], "version": f"0.1.0-seeded{seed}",
        "description": f"Generated {kind} (seed {seed}): seeded untrained weights, its classes mean nothing.",
        "clinical": False, "sources": ["camera"], "onnx": {"path": "model.onnx", "sha256": sha256},
        "input": {"name": "image", "layout": "NCHW", "height": spec.size, "width": spec.size, "channels": 3},
        "preprocess": {"resize": "linear", "keep_aspect": False, "color": "rgb", "pixel_range": 1},
        "output": {"name": "logits", "decode": "softmax", "labels": list(spec.labels)},
        "batching": {"max_batch_size": 16, "max_queue_delay_ms": 5, "max_queue_size": 64},
    }


def write_classifier(kind: str, folder: Path, seed: int = 0, name: str | None = None) -> Path:
    """``folder/model.onnx`` and a ``model.yaml`` pinning it (``name`` overrides the manifest's name)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = build_classifier(kind, seed).SerializeToString()
    path = folder / "model.onnx"
    path.write_bytes(data)
    m = manifest(kind, seed, hashlib.sha256(data).hexdigest())
    if name:
        m["name"] = name
    (folder / "model.yaml").write_text(f"# Generated by {PRODUCER}; do not edit.\n"
                                       + yaml.safe_dump(m, sort_keys=False), encoding="utf-8")
    return path
