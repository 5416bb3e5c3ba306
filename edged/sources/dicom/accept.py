"""Which model takes which image, decided from the header alone (no pixel decoding).

Policy for tags that are often missing or wrong in the field (documented in the README):
SOP class, modality and photometric interpretation must match when present; BodyPartExamined
and ViewPosition follow the manifest's ``when_missing`` policy when absent (default: accept,
because many CR/DX devices leave them empty) and must match when present — a lateral view or
a knee is never inferred by a frontal chest model.

Every value read here goes through :mod:`edged.sources.dicom.vocab` first: routing decisions,
refusal reasons and the payload's ``source`` block only ever see defined terms or a code.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import UID

from edged.models.manifest import ModelManifest
from edged.sources.dicom import vocab

SKIP_REASONS = ("sop_class", "modality", "body_part", "view_position", "photometric", "multi_frame")


@dataclass(frozen=True)
class SourceInfo:
    """The PHI-free facts about an image that results and events may carry."""

    calling_ae: str
    sop_class: str  # the SOP class *name*, never a UID
    modality: str | None
    body_part: str | None
    view_position: str | None
    photometric: str | None
    transfer_syntax: str | None
    rows: int | None
    columns: int | None
    origin_ae: str | None = None  # the originating modality when a router forwards (see origin_ae())

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, "")}


def value(ds: Dataset, keyword: str) -> object:
    """An element's value, or None when it is absent or cannot be read (a corrupted element must
    not raise out of routing: the image is then described as ``invalid``, not lost)."""
    try:
        return ds.get(keyword)
    except Exception:
        return vocab.UNREADABLE


def _int(ds: Dataset, keyword: str, limit: int = 1 << 31) -> int | None:
    v = value(ds, keyword)
    try:
        n = int(v)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return n if 0 <= n < limit else None


def sop_class_name(uid: object) -> str:
    """The standard name of a SOP class or transfer syntax; private and unknown ones stay
    anonymous (their UID could name a vendor's product line, and the rule is simply: no UIDs
    leave the device)."""
    if uid is vocab.UNREADABLE:
        return "private or unknown"
    text = str(uid)[:vocab.MAX_RAW]
    try:
        name = UID(text).name
    except Exception:
        return "private or unknown"
    return "private or unknown" if name == text or not name.isprintable() else name[:96]


class Vocabulary:
    """The coded values this device may repeat: DICOM's defined terms plus the terms the served
    models' accept rules name."""

    def __init__(self, manifests: list[ModelManifest]):
        def extra(attr: str) -> frozenset[str]:
            return frozenset(v.upper() for m in manifests for v in getattr(m.accept, attr))

        self.modalities = vocab.MODALITIES | extra("modalities")
        self.body_parts = vocab.BODY_PARTS | extra("body_parts")
        self.views = vocab.VIEW_POSITIONS | extra("view_positions")
        self.photometric = vocab.PHOTOMETRIC | extra("photometric")

    def modality(self, ds: Dataset) -> str | None:
        return vocab.coded(value(ds, "Modality"), self.modalities)

    def body_part(self, ds: Dataset) -> str | None:
        return vocab.coded(value(ds, "BodyPartExamined"), self.body_parts)

    def view(self, ds: Dataset) -> str | None:
        return vocab.coded(value(ds, "ViewPosition"), self.views)

    def photometric_of(self, ds: Dataset) -> str | None:
        return vocab.coded(value(ds, "PhotometricInterpretation"), self.photometric)


ORIGIN_TAGS = ("SourceApplicationEntityTitle", "StationAETitle", "PerformedStationAETitle")


def origin_ae(ds: Dataset) -> str | None:
    """The AE title of the modality that made the image, when the dataset says: Source
    Application Entity Title (0002,0016) where a sender kept it in the file meta, else Station
    AE Title (0008,0055), else Performed Station AE Title (0040,0241). Through a router,
    ``calling_ae`` is the router; this is the room. Checked like ``calling_ae`` (an AE title as
    its VR allows, else ``invalid``); None when no tag has one."""
    meta = getattr(ds, "file_meta", None)
    for where, keyword in [(meta, ORIGIN_TAGS[0])] + [(ds, k) for k in ORIGIN_TAGS]:
        if where is None:
            continue
        v = value(where, keyword)
        if v is vocab.UNREADABLE:
            return vocab.INVALID
        if v not in (None, ""):
            return vocab.ae_title(v if isinstance(v, (str, bytes)) else str(v))
    return None


def source_info(ds: Dataset, calling_ae: str, words: Vocabulary) -> SourceInfo:
    meta = getattr(ds, "file_meta", None)
    ts = value(meta, "TransferSyntaxUID") if meta is not None else None
    sop = value(ds, "SOPClassUID")
    return SourceInfo(
        calling_ae=vocab.ae_title(calling_ae),
        sop_class=sop_class_name(sop) if sop else "unknown",
        modality=words.modality(ds),
        body_part=words.body_part(ds),
        view_position=words.view(ds),
        photometric=words.photometric_of(ds),
        transfer_syntax=sop_class_name(ts) if ts else None,
        rows=_int(ds, "Rows", 1 << 16),
        columns=_int(ds, "Columns", 1 << 16),
        origin_ae=origin_ae(ds),
    )


def refusal(ds: Dataset, m: ModelManifest, words: Vocabulary) -> str | None:
    """None if ``m`` accepts the image, else ``code: explanation`` (code from SKIP_REASONS; the
    explanation quotes only vocabulary terms and codes)."""
    rules = m.accept
    if str(value(ds, "SOPClassUID") or "")[:vocab.MAX_RAW] not in rules.sop_classes:
        return "sop_class: not a storage class this model accepts"
    modality = words.modality(ds)
    if modality not in rules.modalities:
        return f"modality: {modality or 'missing'} not in {'/'.join(rules.modalities)}"
    body = words.body_part(ds)
    if body is None and rules.when_missing.body_part == "skip":
        return "body_part: BodyPartExamined missing"
    if body is not None and body not in rules.body_parts:
        return f"body_part: {body} not in {'/'.join(rules.body_parts)}"
    view = words.view(ds)
    if view is None and rules.when_missing.view_position == "skip":
        return "view_position: ViewPosition missing"
    if view is not None and view not in rules.view_positions:
        return f"view_position: {view} not in {'/'.join(rules.view_positions)}"
    photometric = words.photometric_of(ds)
    if photometric not in rules.photometric:
        return f"photometric: {photometric or 'missing'} not supported"
    frames = _int(ds, "NumberOfFrames") if value(ds, "NumberOfFrames") not in (None, "") else 1
    if frames is None:
        return "multi_frame: NumberOfFrames invalid"
    if frames > rules.max_frames:
        return f"multi_frame: {frames} frames"
    return None


def route(ds: Dataset, manifests: list[ModelManifest], words: Vocabulary) -> tuple[list[str], dict[str, str]]:
    """Names of the models that accept ``ds``, and the refusal reason of each that does not."""
    accepted, refused = [], {}
    for m in manifests:
        why = refusal(ds, m, words)
        if why is None:
            accepted.append(m.name)
        else:
            refused[m.name] = why
    return accepted, refused
