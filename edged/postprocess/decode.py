"""Output decoding: the one place that turns raw output tensors into what a consumer reads.

A manifest's ``outputs`` names, for each decoded output, a decoder from :data:`DECODERS` and
the raw tensors it reads. The same functions serve results (per image) and the TensorRT
accuracy gate (per batch), so the gate compares exactly the numbers a consumer would see.

Decoders of kind ``scores`` map a (N, K) tensor to K numbers per image under the output's
labels: ``sigmoid`` (independent per label: multi-label), ``softmax`` (per row: one of K),
``none`` (raw values). Detection decoders (kind ``detections``) are added by the detection
module through :func:`register`.

numpy is imported inside the functions that compute: the model manifest validates ``decode``
names against this registry, and ``edged check`` must not pay for (or depend on) numpy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

Raw = dict[str, "np.ndarray"]


@dataclass(frozen=True)
class Decoder:
    name: str
    kind: str  # "scores" or "detections"
    # (spec, raw tensors of a whole batch, each (N, ...)) -> one decoded value per image
    batch: Callable[[Any, Raw], list[Any]]
    # scores only: (spec, raw batch) -> (N, K) float64, the array the accuracy gate compares
    dense: Callable[[Any, Raw], np.ndarray] | None = None


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
    import numpy as np

    (tensor,) = tensors_of(spec)
    x = np.asarray(raw[tensor], dtype=np.float64)
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] != len(spec.labels):
        raise ValueError(f"output {spec.name}: {x.shape[1]} values for {len(spec.labels)} labels")
    return x


def sigmoid(x: np.ndarray) -> np.ndarray:
    import numpy as np

    return 1.0 / (1.0 + np.exp(-x))


def softmax_rows(x: np.ndarray) -> np.ndarray:
    import numpy as np

    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _scores_decoder(name: str, fn: Callable[[np.ndarray], np.ndarray]) -> Decoder:
    def dense(spec: Any, raw: Raw) -> np.ndarray:
        return fn(_matrix(spec, raw))

    def batch(spec: Any, raw: Raw) -> list[dict[str, float]]:
        return [{label: round(float(v), 6) for label, v in zip(spec.labels, row)} for row in dense(spec, raw)]

    return Decoder(name, "scores", batch, dense)


register(_scores_decoder("sigmoid", sigmoid))
register(_scores_decoder("softmax", softmax_rows))
register(_scores_decoder("none", lambda x: x))


def decode_batch(specs: tuple[Any, ...], raw: Raw) -> list[dict[str, Any]]:
    """Every decoded output of every image of a batch: ``[{output name: value}, ...]``."""
    n = next(iter(raw.values())).shape[0] if raw else 0
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for spec in specs:
        for i, value in enumerate(DECODERS[spec.decode].batch(spec, raw)):
            out[i][spec.name] = value
    return out


def decode_one(specs: tuple[Any, ...], raw: Raw) -> dict[str, Any]:
    """The decoded outputs of one image whose raw tensors have no batch axis."""
    import numpy as np

    return decode_batch(specs, {k: v[np.newaxis] for k, v in raw.items()})[0]


def dense(spec: Any, raw: Raw) -> np.ndarray | None:
    """(N, K) decoded scores for the accuracy gate; None for decoders without a dense form."""
    decoder = DECODERS[spec.decode]
    return decoder.dense(spec, raw) if decoder.dense is not None else None


def kind_of(spec: Any) -> str:
    return DECODERS[spec.decode].kind
