"""The accuracy gate: an FP16/INT8/DLA engine serves only if it agrees with the FP32 reference.

Reduced precision can silently cost accuracy (INT8 with a bad calibration set, an FP16 overflow,
a layer that fell back oddly). Before activation the candidate and ONNX Runtime FP32 run the same
validation inputs; we compare per-label *scores* (after the manifest's activation, the numbers a
consumer sees): max and mean absolute difference, and, when labels are given, the AUROC drop per
label. Thresholds come from the model manifest (``accuracy:``). Without validation images the gate
still runs on seeded synthetic inputs and says so: that checks numeric drift, not diagnostic
accuracy.

Labels: ``labels.csv`` in the validation folder, header ``file,<label>,...`` (any subset of the
manifest's labels), values 1/0, empty for unknown.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edged.backends.base import Backend
from edged.models.manifest import AccuracyGate


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


def activate(raw: np.ndarray, activation: str) -> np.ndarray:
    raw = raw.astype(np.float64)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-raw))
    if activation == "softmax":
        e = np.exp(raw - raw.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return raw


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


def _run(backend: Backend, inputs: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([backend.infer(inputs[i:i + batch]) for i in range(0, len(inputs), batch)])


def run_gate(candidate: Backend, reference: Backend, inputs: np.ndarray, gate: AccuracyGate, *,
             activation: str = "sigmoid", label_names: tuple[str, ...] = (), labels: np.ndarray | None = None,
             batch: int = 8, input_kind: str = "images") -> GateResult:
    """Compare ``candidate`` with ``reference`` on ``inputs``; ``passed`` False names every breach."""
    ref = activate(_run(reference, inputs, batch), activation)
    cand = activate(_run(candidate, inputs, batch), activation)
    if ref.shape != cand.shape:
        return GateResult(False, f"output shapes differ: {cand.shape} vs reference {ref.shape}", float("inf"),
                          float("inf"), None, len(inputs), input_kind)
    diff = np.abs(cand - ref)
    max_abs, mean_abs = float(diff.max(initial=0.0)), float(diff.mean()) if diff.size else 0.0
    names = label_names if len(label_names) == ref.shape[1] else tuple(f"#{k}" for k in range(ref.shape[1]))
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
        for k in range(ref.shape[1]):
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
