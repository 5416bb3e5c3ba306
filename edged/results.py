"""From raw model outputs to a PHI-free result message (schema ``edged.result/v1``)."""

from __future__ import annotations

import numpy as np

from edged.backends.base import BackendInfo
from edged.models.manifest import ModelManifest
from edged.mqtt import messages


def activate(raw: np.ndarray, activation: str) -> np.ndarray:
    x = raw.astype(np.float64)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if activation == "softmax":
        e = np.exp(x - x.max())
        return e / e.sum()
    return x


def scores(raw: np.ndarray, manifest: ModelManifest) -> dict[str, float]:
    labels = manifest.output.labels
    if raw.shape[-1] != len(labels):
        raise ValueError(f"model {manifest.name} returned {raw.shape[-1]} outputs for {len(labels)} labels")
    values = activate(raw.reshape(-1), manifest.output.activation)
    return {label: round(float(v), 6) for label, v in zip(labels, values)}


def model_block(manifest: ModelManifest, info: BackendInfo) -> dict:
    return {
        "name": manifest.name,
        "version": manifest.version,
        "sha256": manifest.onnx.sha256,
        "backend": info.backend,
        "precision": info.precision,
        "device": info.device,
        "clinical": manifest.clinical,
    }


def result_message(
    *,
    node: str,
    message_id: str,
    manifest: ModelManifest,
    info: BackendInfo,
    study: str,
    instance: str,
    label_scores: dict[str, float],
    timings: dict[str, float | int],
    source: dict,
) -> dict:
    return {
        "schema": messages.RESULT_SCHEMA,
        "message_id": message_id,
        "node": node,
        "time": messages.utc_now(),
        "study": study,
        "instance": instance,
        "clinical": manifest.clinical,
        "model": model_block(manifest, info),
        "scores": label_scores,
        "timings_ms": timings,
        "source": source,
    }
