"""One DICOM Comprehensive SR per inferred image: TID 1500 as the IHE AI Results profile uses it.

The report is filed in the source study: the patient and study identity are copied element by
element (bytes and VR as the source had them, with its Specific Character Set) from the image's
header, which :func:`capture` reads from the spooled file. It says who made it (device observer:
manufacturer "edged", the node; algorithm identification: the model's name, version and
sha256), what was measured (one numeric measurement per label, unit "no units", in one
measurement group that references the source image), and, for a model whose manifest says
``clinical: false``, that it is not for clinical use — in the series description and as a
comment in the report text, where a radiologist's viewer shows it.

Everything here is on-device only: this dataset holds PHI and goes to the hospital's PACS over
DICOM, never to MQTT or a log line. UIDs are derived from the result's stable message id
(:func:`derived_uid`), so the same result always has the same SOP Instance UID and a resend is
idempotent at the PACS.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

from edged import __version__

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
PATIENT = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex")
STUDY = ("StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
         "StudyDescription")
REFERENCE = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID")
CAPTURED = ("SpecificCharacterSet", *PATIENT, *STUDY, *REFERENCE)
TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")
SERIES_NUMBER = 7100  # a number of its own, away from the modality's series
PRIVATE_SCHEME = "99EDGED"  # labels are the model's, not a standard terminology's
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
ENGLISH = Code("en-US", "RFC5646", "English (United States)")
SOURCE = Code("260753009", "SCT", "Source")


class NotReportable(ValueError):
    """The source header lacks what an SR in its study needs (study, series or instance UID)."""


@dataclass(frozen=True)
class Uids:
    instance: str  # the SR's SOP Instance UID (stable per result)
    series: str  # one SR series per model and study
    tracking: str  # the measurement group's Tracking Unique Identifier
    device: str  # the device observer (this node)


def derived_uid(stable_id: str) -> str:
    """A ``2.25`` UID (PS3.5 B.2) from a stable 128-bit hex id: same id, same UID."""
    return f"2.25.{uuid.UUID(hex=stable_id[:32], version=4).int}"


def capture(path: Path) -> Dataset:
    """The source image's identity and references, read from its file (never its pixels)."""
    src = dcmread(path, stop_before_pixels=True, specific_tags=list(CAPTURED))
    out = Dataset()
    for keyword in CAPTURED:
        if keyword in src:
            out[keyword] = src[keyword]  # element as received: value bytes and VR unchanged
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not str(out.get(keyword, "") or "").strip():
            raise NotReportable(f"the source has no {keyword}")
    return out


@dataclass(frozen=True)
class Finding:
    """What one model said about one image (no PHI)."""

    model: str
    version: str
    sha256: str
    clinical: bool
    backend: str
    precision: str
    scores: dict[str, float]
    node: str


def build(source: Dataset, finding: Finding, uids: Uids, when: datetime) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = COMPREHENSIVE_SR
    ds.file_meta.MediaStorageSOPInstanceUID = uids.instance
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = f"EDGED_{__version__}"[:16]
    for keyword in ("SpecificCharacterSet", *PATIENT, *STUDY):
        if keyword in source:
            ds[keyword] = source[keyword]
        elif keyword in TYPE_2:
            setattr(ds, keyword, "")
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.SOPClassUID, ds.SOPInstanceUID = COMPREHENSIVE_SR, uids.instance
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    scheme = Dataset()
    scheme.CodingSchemeDesignator, scheme.CodingSchemeName = PRIVATE_SCHEME, "edged model output labels"
    scheme.CodingSchemeResponsibleOrganization = "edged"
    ds.CodingSchemeIdentificationSequence = [scheme]
    # SR Document Series and General Equipment
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "SR", uids.series, SERIES_NUMBER
    ds.SeriesDescription = _title(finding)[:64]
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.Manufacturer, ds.ManufacturerModelName = "edged", "edged"
    ds.SoftwareVersions = __version__
    # SR Document General
    ds.InstanceNumber = 1
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ContentDate, ds.ContentTime = date, time
    ds.PerformedProcedureCodeSequence = Sequence()
    ds.CurrentRequestedProcedureEvidenceSequence = [_evidence(source)]
    # SR Document Content: the root of TID 1500
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code(codes.DCM.ImagingMeasurementReport)]
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource, template.TemplateIdentifier = "DCMR", "1500"
    ds.ContentTemplateSequence = [template]
    ds.ContentSequence = _content(source, finding, uids)
    return ds


def encode(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _title(f: Finding) -> str:
    flag = " - NOT FOR CLINICAL USE" if not f.clinical else ""
    return f"AI result {f.model} {f.version}{flag}"


def _evidence(source: Dataset) -> Dataset:
    sop = Dataset()
    sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    series.ReferencedSOPSequence = [sop]
    study = Dataset()
    study.StudyInstanceUID = source.StudyInstanceUID
    study.ReferencedSeriesSequence = [series]
    return study


def _content(source: Dataset, f: Finding, uids: Uids) -> list[Dataset]:
    items = [
        _coded("HAS CONCEPT MOD", codes.DCM.LanguageOfContentItemAndDescendants, ENGLISH),
        # TID 1001/1002/1004: the observer is a device
        _coded("HAS OBS CONTEXT", codes.DCM.ObserverType, codes.DCM.Device),
        _item("HAS OBS CONTEXT", "UIDREF", codes.DCM.DeviceObserverUID, UID=uids.device),
        _text("HAS OBS CONTEXT", codes.DCM.DeviceObserverName, f"edged {f.node}"),
        _text("HAS OBS CONTEXT", codes.DCM.DeviceObserverManufacturer, "edged"),
        _text("HAS OBS CONTEXT", codes.DCM.DeviceObserverModelName, f"{f.model} {f.version}"),
        _coded("HAS CONCEPT MOD", codes.DCM.ProcedureReported, codes.SCT.ImagingProcedure),
    ]
    group = _container("CONTAINS", codes.DCM.MeasurementGroup, template="1501", children=[
        _text("HAS OBS CONTEXT", codes.DCM.TrackingIdentifier, f"{f.model} {f.version} result"),
        _item("HAS OBS CONTEXT", "UIDREF", codes.DCM.TrackingUniqueIdentifier, UID=uids.tracking),
        # TID 4019 Algorithm Identification
        _text("HAS CONCEPT MOD", codes.DCM.AlgorithmName, f.model),
        _text("HAS CONCEPT MOD", codes.DCM.AlgorithmVersion, f.version),
        _text("HAS CONCEPT MOD", codes.DCM.AlgorithmParameters,
              f"onnx sha256 {f.sha256}; backend {f.backend}; precision {f.precision}"),
        _image("CONTAINS", SOURCE, source),
        *(_score(label, score) for label, score in f.scores.items()),
    ])
    items.append(_container("CONTAINS", codes.DCM.ImagingMeasurements, children=[group]))
    items.append(_container("CONTAINS", QUALITATIVE_EVALUATIONS, children=[
        _text("CONTAINS", codes.DCM.Comment, _comment(f)),
    ]))
    return items


def _comment(f: Finding) -> str:
    scores = ", ".join(f"{label} {score:.3f}" for label, score in f.scores.items())
    head = (f"NOT FOR CLINICAL USE: the model {f.model} {f.version} is marked clinical: false and must not be used "
            f"for diagnosis. " if not f.clinical else "")
    return f"{head}Scores (0-1) computed by edged on {f.node}: {scores}."


def label_code(label: str) -> Code:
    """A label of the model as a code of the private scheme (Code Value at most 16 characters)."""
    import hashlib

    value = "".join(c for c in label.upper().replace(" ", "_") if c.isalnum() or c == "_") or "LABEL"
    if len(value) > 16:
        value = value[:11] + "_" + hashlib.sha256(label.encode()).hexdigest()[:4].upper()
    return Code(value, PRIVATE_SCHEME, label[:64])


def _score(label: str, score: float) -> Dataset:
    measured = Dataset()
    measured.NumericValue = f"{float(score):.6g}"[:16]
    measured.FloatingPointValue = float(score)
    measured.MeasurementUnitsCodeSequence = [_code(codes.UCUM.NoUnits)]
    item = _item("CONTAINS", "NUM", label_code(label))
    item.MeasuredValueSequence = [measured]
    return item


def _code(code: Code) -> Dataset:
    ds = Dataset()
    ds.CodeValue, ds.CodingSchemeDesignator, ds.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return ds


def _item(relationship: str, value_type: str, name: Code, **values: object) -> Dataset:
    ds = Dataset()
    ds.RelationshipType, ds.ValueType = relationship, value_type
    ds.ConceptNameCodeSequence = [_code(name)]
    for keyword, v in values.items():
        setattr(ds, keyword, v)
    return ds


def _text(relationship: str, name: Code, text: str) -> Dataset:
    return _item(relationship, "TEXT", name, TextValue=text)


def _coded(relationship: str, name: Code, value: Code) -> Dataset:
    item = _item(relationship, "CODE", name)
    item.ConceptCodeSequence = [_code(value)]
    return item


def _image(relationship: str, name: Code, source: Dataset) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    item = _item(relationship, "IMAGE", name)
    item.ReferencedSOPSequence = [ref]
    return item


def _container(relationship: str, name: Code, children: list[Dataset], template: str | None = None) -> Dataset:
    item = _item(relationship, "CONTAINER", name)
    item.ContinuityOfContent = "SEPARATE"
    if template is not None:
        t = Dataset()
        t.MappingResource, t.TemplateIdentifier = "DCMR", template
        item.ContentTemplateSequence = [t]
    item.ContentSequence = children
    return item
