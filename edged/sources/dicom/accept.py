"""Which model takes which image, decided from the header alone (no pixel decoding).

Policy for tags that are often missing or wrong in the field (documented in the README):
SOP class, modality and photometric interpretation must match when present; BodyPartExamined
and ViewPosition follow the manifest's ``when_missing`` policy when absent (default: accept,
because many CR/DX devices leave them empty) and must match when present — a lateral view or
a knee is never inferred by a frontal chest model.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import UID

from edged.models.manifest import ModelManifest


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

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, "")}


def _norm(value: object) -> str | None:
    text = str(value).strip().upper() if value is not None else ""
    return text or None


def sop_class_name(uid: str) -> str:
    """The standard name of a SOP class; private and unknown classes stay anonymous (their UID
    could name a vendor's product line, and the rule is simply: no UIDs leave the device)."""
    name = UID(uid).name
    return "private or unknown SOP class" if name == uid else name


def source_info(ds: Dataset, calling_ae: str) -> SourceInfo:
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    sop = ds.get("SOPClassUID")
    return SourceInfo(
        calling_ae=calling_ae,
        sop_class=sop_class_name(str(sop)) if sop else "unknown",
        modality=_norm(ds.get("Modality")),
        body_part=_norm(ds.get("BodyPartExamined")),
        view_position=_norm(ds.get("ViewPosition")),
        photometric=_norm(ds.get("PhotometricInterpretation")),
        transfer_syntax=sop_class_name(str(ts)) if ts else None,
        rows=int(ds.Rows) if ds.get("Rows") is not None else None,
        columns=int(ds.Columns) if ds.get("Columns") is not None else None,
    )


def refusal(ds: Dataset, m: ModelManifest) -> str | None:
    """None if ``m`` accepts the image, else a short reason code with a PHI-free explanation."""
    rules = m.accept
    if str(ds.get("SOPClassUID", "")) not in rules.sop_classes:
        return "sop_class: not a storage class this model accepts"
    modality = _norm(ds.get("Modality"))
    if modality not in rules.modalities:
        return f"modality: {modality or 'missing'} not in {'/'.join(rules.modalities)}"
    body = _norm(ds.get("BodyPartExamined"))
    if body is None and rules.when_missing.body_part == "skip":
        return "body_part: BodyPartExamined missing"
    if body is not None and body not in rules.body_parts:
        return f"body_part: {body} not in {'/'.join(rules.body_parts)}"
    view = _norm(ds.get("ViewPosition"))
    if view is None and rules.when_missing.view_position == "skip":
        return "view_position: ViewPosition missing"
    if view is not None and view not in rules.view_positions:
        return f"view_position: {view} not in {'/'.join(rules.view_positions)}"
    photometric = _norm(ds.get("PhotometricInterpretation"))
    if photometric not in rules.photometric:
        return f"photometric: {photometric or 'missing'} not supported"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > rules.max_frames:
        return f"multi_frame: {frames} frames"
    return None


def route(ds: Dataset, manifests: list[ModelManifest]) -> tuple[list[str], dict[str, str]]:
    """Names of the models that accept ``ds``, and the refusal reason of each that does not."""
    accepted, refused = [], {}
    for m in manifests:
        why = refusal(ds, m)
        if why is None:
            accepted.append(m.name)
        else:
            refused[m.name] = why
    return accepted, refused
