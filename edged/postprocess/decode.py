"""Output decoding: the one place that turns raw output tensors into what a consumer reads.

A manifest's ``outputs`` names, for each decoded output, a decoder from :data:`DECODERS` and
the raw tensors it reads. The same functions serve results (per image) and the TensorRT
accuracy gate (per batch), so the gate compares exactly the numbers a consumer would see.

Decoders of kind ``scores`` map a (N, K) tensor to K numbers per image under the output's
labels: ``sigmoid`` (independent per label: multi-label), ``softmax`` (per row: one of K),
``none`` (raw values). Detection decoders (kind ``detections``: ``centernet``, ``yolo``) are
added by :mod:`edged.postprocess.detection` through :func:`register`; they take each image's
letterbox geometry (``geometry``) so their boxes come out normalized to the frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Raw = dict[str, np.ndarray]


@dataclass(frozen=True)
class Decoder:
    name: str
    kind: str  # "scores" or "detections"
    # (spec, raw tensors of a whole batch, each (N, ...), per-image geometry or None) -> one
    # decoded value per image; score decoders ignore the geometry
    batch: Callable[[Any, Raw, Any], list[Any]]
    # scores only: (spec, raw batch) -> (N, K) float64, the array the accuracy gate compares
    dense: Callable[[Any, Raw], np.ndarray] | None = None
    # raises ValueError when an output spec cannot work with this decoder (manifest validation)
    check: Callable[[Any], None] = lambda spec: None


DECODERS: dict[str, Decoder] = {}


def register(decoder: Decoder) -> Decoder:
    if decoder.name in DECODERS:
        raise ValueError(f"decoder {decoder.name} registered twice")
    DECODERS[decoder.name] = decoder
    return decoder


def tensors_of(spec: Any) -> tuple[str, ...]:
    """The raw tensors an output reads: its ``tensors`` list, else the tensor of its own name."""
    return tuple(spec.tensors) or (spec.name,)


def _matrix(spec: Any, raw: Raw) -> np.ndarray:
    (tensor,) = tensors_of(spec)
    x = np.asarray(raw[tensor], dtype=np.float64)
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] != len(spec.labels):
        raise ValueError(f"output {spec.name}: {x.shape[1]} values for {len(spec.labels)} labels")
    return x


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def softmax_rows(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _scores_decoder(name: str, fn: Callable[[np.ndarray], np.ndarray]) -> Decoder:
    def dense(spec: Any, raw: Raw) -> np.ndarray:
        return fn(_matrix(spec, raw))

    def batch(spec: Any, raw: Raw, geometry: Any = None) -> list[dict[str, float]]:
        return [{label: round(float(v), 6) for label, v in zip(spec.labels, row)} for row in dense(spec, raw)]

    return Decoder(name, "scores", batch, dense)


register(_scores_decoder("sigmoid", sigmoid))
register(_scores_decoder("softmax", softmax_rows))
register(_scores_decoder("none", lambda x: x))


def decode_batch(specs: tuple[Any, ...], raw: Raw, geometry: list[Any] | None = None) -> list[dict[str, Any]]:
    """Every decoded output of every image of a batch: ``[{output name: value}, ...]``.
    ``geometry`` (one per image) maps detection boxes to each image's frame."""
    n = next(iter(raw.values())).shape[0] if raw else 0
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for spec in specs:
        for i, value in enumerate(DECODERS[spec.decode].batch(spec, raw, geometry)):
            out[i][spec.name] = value
    return out


def decode_one(specs: tuple[Any, ...], raw: Raw, geometry: Any = None) -> dict[str, Any]:
    """The decoded outputs of one image whose raw tensors have no batch axis."""
    return decode_batch(specs, {k: v[np.newaxis] for k, v in raw.items()},
                        None if geometry is None else [geometry])[0]


def dense(spec: Any, raw: Raw) -> np.ndarray | None:
    """(N, K) decoded scores for the accuracy gate; None for decoders without a dense form."""
    decoder = DECODERS[spec.decode]
    return decoder.dense(spec, raw) if decoder.dense is not None else None


def kind_of(spec: Any) -> str:
    return DECODERS[spec.decode].kind
