"""The accuracy gate: an FP16/INT8/DLA engine serves only if it agrees with the FP32 reference.

Reduced precision can silently cost accuracy (INT8 with a bad calibration set, an FP16 overflow,
a layer that fell back oddly). Before activation the candidate and ONNX Runtime FP32 run the same
validation inputs; we compare the *decoded* outputs — the numbers a consumer sees, decoded by the
same functions results use (:mod:`edged.postprocess.decode`): max and mean absolute difference
per label of every score output, and, when labels are given, the AUROC drop per label. Detection
outputs are compared as a consumer sees them: both runs decoded into boxes (threshold, NMS), each
reference box matched to the candidate's box of the same label it overlaps most; per image, the
worst score difference and the worst ``1 − IoU`` of a matched pair, and 1.0 for a box that either
run found and the other did not. Thresholds come from the model manifest (``accuracy:``). Without validation images the gate
still runs on seeded synthetic inputs and says so: that checks numeric drift, not diagnostic
accuracy.

Labels: ``labels.csv`` in the validation folder, header ``file,<label>,...`` (any subset of the
manifest's labels), values 1/0, empty for unknown.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edged.backends.base import Backend
from edged.backends.onnxruntime import OnnxRuntimeBackend
from edged.backends.tensorrt.builder import Preprocess, calibration_digest
from edged.backends.tensorrt.engines import EngineManager, EngineSet, preprocess_fingerprint
from edged.models.manifest import AccuracyGate, OutputSpec, sha256_file
from edged.postprocess.decode import DECODERS, dense, kind_of, tensors_of
from edged.postprocess.detection import iou
from edged.preprocess.geometry import identity


@dataclass
class GateResult:
    passed: bool
    reason: str
    max_abs_diff: float
    mean_abs_diff: float
    auroc_drop: float | None
    samples: int
    inputs: str  # "images" or "synthetic"
    per_label_max: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Mann-Whitney AUROC with tie correction; None when a label has only one class."""
    labels = labels.astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def read_labels(folder: Path, files: list[Path], names: tuple[str, ...]) -> np.ndarray | None:
    """(N, K) array of 1/0/NaN from ``labels.csv``; None when there is no such file."""
    path = Path(folder) / "labels.csv"
    if not path.exists():
        return None
    out = np.full((len(files), len(names)), np.nan)
    index = {f.name: i for i, f in enumerate(files)}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            i = index.get(Path(row.get("file", "")).name)
            if i is None:
                continue
            for k, name in enumerate(names):
                value = (row.get(name) or "").strip()
                if value in ("0", "1"):
                    out[i, k] = float(value)
    return out


def validation_inputs(images: list[Path], preprocess: Callable[[Path], np.ndarray] | None, shape: tuple[int, ...],
                      synthetic: int = 16, seed: int = 0) -> tuple[np.ndarray, str]:
    """Preprocessed validation images, or seeded N(0,1) tensors in the model's input shape."""
    if images and preprocess is not None:
        return np.stack([np.asarray(preprocess(p), dtype=np.float32) for p in images]), "images"
    rng = np.random.default_rng(seed)
    return rng.standard_normal((synthetic, *shape[1:])).astype(np.float32), "synthetic"


def _run(backend: Backend, inputs: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    parts = [backend.infer(inputs[i:i + batch]) for i in range(0, len(inputs), batch)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def decoded_columns(outputs: tuple[OutputSpec, ...], raw: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """(N, K) of every decoded score (and every raw value of outputs without a dense decoding),
    with a name per column: the label, prefixed by the output when there are several."""
    columns, names = [], []
    for spec in outputs:
        values = dense(spec, raw)
        prefix = f"{spec.name}/" if len(outputs) > 1 else ""
        if values is not None:
            columns.append(values)
            names += [prefix + label for label in spec.labels]
            continue
        for tensor in tensors_of(spec):
            flat = np.asarray(raw[tensor], dtype=np.float64).reshape(len(raw[tensor]), -1)
            columns.append(flat)
            names += [f"{prefix}{tensor}#{k}" for k in range(flat.shape[1])]
    return np.concatenate(columns, axis=1), names


def detection_differences(outputs: tuple[OutputSpec, ...], ref: dict[str, np.ndarray], cand: dict[str, np.ndarray],
                          input_wh: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """(N, 2·K) per-image worst score and box differences of K detection outputs (see the module doc)."""
    columns, names = [], []
    n = len(next(iter(ref.values())))
    geo = [identity(*input_wh)] * n
    for spec in outputs:
        decode = DECODERS[spec.decode].batch
        worst = np.zeros((n, 2))
        for i, (a, b) in enumerate(zip(decode(spec, ref, geo), decode(spec, cand, geo))):
            free = list(b)
            for det in a:
                same = [(iou(det["box"], o["box"]), k) for k, o in enumerate(free) if o["label"] == det["label"]]
                overlap, k = max(same, default=(0.0, -1))
                if k < 0 or overlap <= 0:
                    worst[i] = 1.0
                    continue
                match = free.pop(k)
                worst[i, 0] = max(worst[i, 0], abs(det["score"] - match["score"]))
                worst[i, 1] = max(worst[i, 1], 1.0 - overlap)
            if free:  # boxes only the candidate found
                worst[i] = 1.0
        columns.append(worst)
        names += [f"{spec.name}/score", f"{spec.name}/box"]
    return np.concatenate(columns, axis=1), names


def default_outputs(backend: Backend, label_names: tuple[str, ...] = ()) -> tuple[OutputSpec, ...]:
    """Sigmoid over each raw output, for callers without a manifest (tests, tools)."""
    specs = backend.output_specs
    out = []
    for spec in specs:
        k = int(np.prod([d for d in spec.shape[1:] if d > 0] or [1]))
        labels = label_names if len(label_names) == k and len(specs) == 1 else tuple(f"#{i}" for i in range(k))
        out.append(OutputSpec(name=spec.name, decode="sigmoid", labels=labels))
    return tuple(out)


def run_gate(candidate: Backend, reference: Backend, inputs: np.ndarray, gate: AccuracyGate, *,
             outputs: tuple[OutputSpec, ...] | None = None, label_names: tuple[str, ...] = (),
             labels: np.ndarray | None = None, batch: int = 8, input_kind: str = "images") -> GateResult:
    """Compare ``candidate`` with ``reference`` on ``inputs``; ``passed`` False names every breach.
    ``outputs`` are the manifest's decoded outputs; ``labels`` (N, K) align with their columns."""
    outputs = outputs or default_outputs(reference, label_names)
    scores = tuple(o for o in outputs if kind_of(o) != "detections")
    boxes = tuple(o for o in outputs if kind_of(o) == "detections")
    n = len(inputs)
    try:
        ref_raw, cand_raw = _run(reference, inputs, batch), _run(candidate, inputs, batch)
        ref, names = decoded_columns(scores, ref_raw) if scores else (np.zeros((n, 0)), [])
        cand, _ = decoded_columns(scores, cand_raw) if scores else (np.zeros((n, 0)), [])
        if not all(np.all(np.isfinite(np.asarray(cand_raw[t], dtype=np.float64)))
                   for o in boxes for t in tensors_of(o)):
            cand = np.concatenate([cand, np.full((n, 1), np.nan)], axis=1)  # reported as NaN/Inf below
            ref = np.concatenate([ref, np.zeros((n, 1))], axis=1)
            names = [*names, "detections"]
    except (KeyError, ValueError) as exc:
        return GateResult(False, f"outputs do not match the reference: {exc}", float("inf"), float("inf"), None,
                          len(inputs), input_kind)
    if ref.shape != cand.shape:
        return GateResult(False, f"output shapes differ: {cand.shape} vs reference {ref.shape}", float("inf"),
                          float("inf"), None, len(inputs), input_kind)
    diff = np.abs(cand - ref)
    if boxes:
        nchw = inputs.shape[1] in (1, 3)
        wh = (inputs.shape[3], inputs.shape[2]) if nchw else (inputs.shape[2], inputs.shape[1])
        try:
            extra, extra_names = detection_differences(boxes, ref_raw, cand_raw, wh)
        except (KeyError, ValueError) as exc:
            return GateResult(False, f"detections do not decode: {exc}", float("inf"), float("inf"), None, n,
                              input_kind)
        diff, names = np.concatenate([diff, extra], axis=1), [*names, *extra_names]
    max_abs, mean_abs = float(diff.max(initial=0.0)), float(diff.mean()) if diff.size else 0.0
    per_label = {n: float(diff[:, k].max(initial=0.0)) for k, n in enumerate(names)}
    problems = []
    if not np.all(np.isfinite(cand)):
        problems.append("candidate produced NaN/Inf")
    if max_abs > gate.max_abs_diff:
        worst = max(per_label, key=per_label.get)
        problems.append(f"max abs diff {max_abs:.4g} > {gate.max_abs_diff:g} (worst label {worst})")
    if mean_abs > gate.mean_abs_diff:
        problems.append(f"mean abs diff {mean_abs:.4g} > {gate.mean_abs_diff:g}")
    drop = None
    if labels is not None:
        drops = []
        for k in range(min(ref.shape[1], labels.shape[1])):
            known = ~np.isnan(labels[:, k])
            a_ref, a_cand = auroc(ref[known, k], labels[known, k]), auroc(cand[known, k], labels[known, k])
            if a_ref is not None and a_cand is not None:
                drops.append(a_ref - a_cand)
        if drops:
            drop = float(max(drops))
            if drop > gate.max_auroc_drop:
                problems.append(f"AUROC drop {drop:.4g} > {gate.max_auroc_drop:g}")
    where = f"{len(inputs)} {'validation images' if input_kind == 'images' else 'synthetic inputs (numeric drift only)'}"
    if problems:
        return GateResult(False, f"failed on {where}: " + "; ".join(problems), max_abs, mean_abs, drop, len(inputs),
                          input_kind, per_label)
    auroc_text = f", AUROC drop {drop:.4g}" if drop is not None else ""
    return GateResult(True, f"passed on {where}: max abs diff {max_abs:.3g}, mean {mean_abs:.3g}{auroc_text}",
                      max_abs, mean_abs, drop, len(inputs), input_kind, per_label)


def gate_engine(manager: EngineManager, candidate: Backend, preprocess: Preprocess | None,
                engines: EngineSet | None = None) -> GateResult:
    """Run the manifest's accuracy gate: candidate vs FP32 ONNX Runtime in-process.

    With ``engines`` the result is remembered in the first engine's metadata, keyed by every
    engine's sha256, the thresholds and the validation data: the same engines on the same data
    give the same answer, so a restart of the daemon does not pay for the gate again.
    """
    manifest = manager.model.manifest
    images = manager.images_for_validation()
    kind = "images" if images and preprocess is not None else "synthetic"
    gate_key = hashlib.sha256(json.dumps({
        "engines": [e.meta.get("engine_sha256") for _, e in engines.entries] if engines else None,
        "accuracy": manifest.accuracy.model_dump(), "kind": kind,
        "outputs": [o.model_dump() for o in manifest.decoded_outputs],
        "data": calibration_digest(manager.model.sha256, images, preprocess_fingerprint(manager.model))
        if kind == "images" else "seed0x16",
        "labels": sha256_file(images[0].parent / "labels.csv") if images and (images[0].parent / "labels.csv").exists() else None,
    }, sort_keys=True).encode()).hexdigest()
    first = engines.entries[0][1] if engines else None
    cached = (first.meta.get("gates") or {}).get(gate_key) if first else None
    if cached:
        result = GateResult(**cached)
        result.reason = f"{result.reason} (remembered from an earlier run)"
        return result
    reference = OnnxRuntimeBackend(manager.model.onnx_path)
    reference.load()
    try:
        inputs, kind = validation_inputs(images, preprocess, reference.input_spec.shape)
        labels = None
        if kind == "images" and images:
            outputs = manifest.decoded_outputs
            names = tuple((f"{o.name}/" if len(outputs) > 1 else "") + label for o in outputs for label in o.labels)
            labels = read_labels(images[0].parent, images, names)
        result = run_gate(candidate, reference, inputs, manifest.accuracy, outputs=manifest.decoded_outputs,
                          labels=labels, batch=manager.max_batch, input_kind=kind)
    finally:
        reference.close()
    if first is not None:
        manager.cache.update_meta(first, gates={**(first.meta.get("gates") or {}), gate_key: result.as_dict()})
    return result
