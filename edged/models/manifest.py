"""The model manifest: one declarative ``engines/<model>/model.yaml`` per model (Triton-style).

Everything the daemon needs to serve a model lives here, so adding a model never means adding
code: which images it accepts, how pixels become a tensor, what the outputs mean, and how
requests are batched. ``clinical: false`` marks models that must never drive care (the shipped
reference model has seeded, untrained weights); the flag travels with every result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from edged.config.yamlsrc import load_yaml_file, validate
from edged.digests import sha256_file  # noqa: F401 (callers import it from here)

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OnnxFile(Strict):
    path: str = "model.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class InputSpec(Strict):
    name: str
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    height: int = Field(gt=0, le=4096)
    width: int = Field(gt=0, le=4096)
    channels: Literal[1, 3] = 3
    dtype: Literal["float32", "float16"] = "float32"


class PreprocessSpec(Strict):
    """Pixel pipeline: modality LUT → VOI (window/LUT) → MONOCHROME1 inversion → resize → normalize.

    ``voi: auto`` uses the dataset's VOI LUT or window and falls back to the full stored range;
    ``voi: minmax`` ignores windows. Values are scaled to [0, 1] before ``mean``/``std``.
    """

    voi: Literal["auto", "minmax"] = "auto"
    invert_monochrome1: bool = True
    resize: Literal["area", "linear"] = "area"
    keep_aspect: bool = False
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    # Frames (camera models): the channel order the network expects, and the range pixel values
    # are scaled to before mean/std (255: the network takes 0-255, as CenterFace does).
    color: Literal["rgb", "bgr"] = "rgb"
    pixel_range: Literal[1, 255] = 1


DETECTION_KEYS = ("score_threshold", "nms_iou", "max_detections", "stride")


class OutputSpec(Strict):
    """One decoded output: which raw tensors it reads and the decoder that makes them readable.

    ``decode`` names a decoder of :mod:`edged.postprocess.decode` (``sigmoid``, ``softmax``,
    ``none``; ``centernet`` and ``yolo`` from :mod:`edged.postprocess.detection`); ``activation``
    is its older name. ``tensors`` defaults to the tensor called ``name``. Score decoders need one
    label per value; detection decoders one label per class, and only they take the detection
    keys (score threshold, per-class NMS IoU, a cap on detections, the heatmap stride).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.:/-]{1,64}$")
    decode: str = Field(default="sigmoid", validation_alias=AliasChoices("decode", "activation"))
    tensors: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    score_threshold: float = Field(default=0.5, gt=0, lt=1)
    nms_iou: float = Field(default=0.45, gt=0, le=1)
    max_detections: int = Field(default=50, ge=1, le=100)
    stride: int = Field(default=4, ge=1, le=64)

    @field_validator("decode")
    @classmethod
    def _known_decoder(cls, v: str) -> str:
        from edged.postprocess.decode import known

        if v not in known():
            raise ValueError(f"unknown decoder {v!r}; known: {', '.join(known())}")
        return v

    @model_validator(mode="after")
    def _labels(self) -> "OutputSpec":
        from edged.postprocess.decode import kind_of

        if kind_of(self) == "scores" and not self.labels:
            raise ValueError(f"output {self.name}: decoder {self.decode} needs labels")
        if kind_of(self) == "scores" and len(self.tensors) > 1:
            raise ValueError(f"output {self.name}: decoder {self.decode} reads one tensor")
        if kind_of(self) == "scores" and self.model_fields_set & set(DETECTION_KEYS):
            keys = ", ".join(sorted(self.model_fields_set & set(DETECTION_KEYS)))
            raise ValueError(f"output {self.name}: {keys} only apply to detection decoders")
        if kind_of(self) == "detections":
            from edged.postprocess.decode import decoder

            decoder(self.decode).check(self)
        return self


class MissingPolicy(Strict):
    """What to do when a tag is absent: field data often lacks BodyPartExamined or ViewPosition."""

    body_part: Literal["accept", "skip"] = "accept"
    view_position: Literal["accept", "skip"] = "accept"


class AcceptRules(Strict):
    sop_classes: tuple[str, ...] = (CR, DX_PRESENTATION)
    modalities: tuple[str, ...] = ("CR", "DX")
    body_parts: tuple[str, ...] = ("CHEST",)
    view_positions: tuple[str, ...] = ("PA", "AP")
    photometric: tuple[str, ...] = ("MONOCHROME1", "MONOCHROME2")
    when_missing: MissingPolicy = MissingPolicy()
    max_frames: int = Field(default=1, ge=1)


class BatchingSpec(Strict):
    """Triton dynamic-batcher semantics; ``max_queue_delay_ms: 0`` sends whatever is queued."""

    max_batch_size: int = Field(default=8, ge=1, le=256)
    max_queue_delay_ms: float = Field(default=20.0, ge=0, le=10_000)
    max_queue_size: int = Field(default=64, ge=1)


class AccuracyGate(Strict):
    """Allowed drift of an FP16/INT8/DLA engine against the FP32 ONNX Runtime reference."""

    max_abs_diff: float = Field(default=0.05, gt=0)
    mean_abs_diff: float = Field(default=0.01, gt=0)
    max_auroc_drop: float = Field(default=0.01, gt=0)


Source = Literal["dicom", "camera"]


class ModelManifest(Strict):
    schema_: Literal["edged.model/v1"] = Field(default="edged.model/v1", alias="schema")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    version: str
    description: str = ""
    clinical: bool
    # Which sources may send this model work. DICOM routing never considers a model without
    # "dicom"; a camera may only name a model with "camera". A model with both is served as two
    # instances (own backend and batcher each), so camera load never queues ahead of an image.
    sources: tuple[Source, ...] = ("dicom",)
    onnx: OnnxFile
    input: InputSpec
    preprocess: PreprocessSpec = PreprocessSpec()
    output: OutputSpec | None = Field(default=None, description="a model with one decoded output")
    outputs: tuple[OutputSpec, ...] = Field(default=(), description="a model with several decoded outputs")
    accept: AcceptRules = AcceptRules()
    batching: BatchingSpec = BatchingSpec()
    accuracy: AccuracyGate = AccuracyGate()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _channels_match_normalization(self) -> "ModelManifest":
        for key in ("mean", "std"):
            values = getattr(self.preprocess, key)
            if len(values) not in (1, self.input.channels):
                raise ValueError(f"preprocess.{key} needs 1 or {self.input.channels} values")
        if any(s <= 0 for s in self.preprocess.std):
            raise ValueError("preprocess.std values must be > 0")
        if not self.sources or len(set(self.sources)) != len(self.sources):
            raise ValueError("sources: list dicom and/or camera, each once")
        if (self.output is None) == (not self.outputs):
            raise ValueError("give either output (one) or outputs (a list), not both and not neither")
        names = [o.name for o in self.decoded_outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"output names must be unique: {', '.join(names)}")
        return self

    @property
    def decoded_outputs(self) -> tuple[OutputSpec, ...]:
        """Every decoded output, in the manifest's order."""
        return (self.output,) if self.output is not None else self.outputs

    @property
    def raw_tensors(self) -> tuple[str, ...]:
        """The network outputs the decoders read (each once, in order)."""
        from edged.postprocess.decode import tensors_of

        seen: dict[str, None] = {}
        for o in self.decoded_outputs:
            seen.update(dict.fromkeys(tensors_of(o)))
        return tuple(seen)


class LoadedModel:
    """A manifest plus where it lives; the ONNX file is checked against the pinned sha256."""

    def __init__(self, manifest: ModelManifest, folder: Path):
        self.manifest = manifest
        self.folder = folder

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def onnx_path(self) -> Path:
        return (self.folder / self.manifest.onnx.path).resolve()

    @property
    def sha256(self) -> str:
        return self.manifest.onnx.sha256

    def verify_onnx(self) -> None:
        """Raise FileNotFoundError/ValueError when the ONNX file is missing or not the pinned one."""
        path = self.onnx_path
        if not path.exists():
            raise FileNotFoundError(
                f"model {self.name}: {path} is missing; generate it with "
                f"`python tools/make_models.py` (or copy the model file there)"
            )
        digest = sha256_file(path)
        if digest != self.sha256:
            raise ValueError(f"model {self.name}: {path} has sha256 {digest}, manifest pins {self.sha256}")



def load_manifest(path: str | Path) -> LoadedModel:
    """Load ``model.yaml`` (or a model folder); errors carry file, line and key."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.yaml"
    src = load_yaml_file(path)
    return LoadedModel(validate(ModelManifest, src), path.parent)
