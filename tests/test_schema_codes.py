"""The JSON Schemas accept what the payload builders emit for coded DICOM values, and nothing else.

``edged.sources.dicom.vocab`` turns a coded attribute that is not a defined term into the code
``unlisted`` (well-formed) or ``invalid`` (breaks its VR); the schemas' ``source`` block must
allow exactly those two lower-case codes beside upper-case defined terms, or a consumer that
validates (as the schemas invite) drops every event about a broken or unusual image. Found by
the fuzz suite (tools/fuzz): every ``skipped`` event for an image with a corrupted Modality
broke the schema.
"""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from edged.mqtt import messages
from edged.sources.dicom.accept import Vocabulary, source_info
from helpers import schema_validator


def _source(**values: str) -> dict:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return source_info(ds, "MODALITY", Vocabulary([])).as_dict()


@pytest.mark.parametrize("keyword,value,code", [
    ("Modality", "XYZZY", "unlisted"),
    ("Modality", "ct scan!", "invalid"),
    ("BodyPartExamined", "MUELLERANNA", "unlisted"),
    ("BodyPartExamined", "A" * 40, "invalid"),
    ("ViewPosition", "SIDEWAYS", "unlisted"),
    ("PhotometricInterpretation", "mono^chrome", "invalid"),
])
def test_coded_values_that_are_not_terms_validate_as_codes(keyword, value, code):
    source = _source(**{keyword: value})
    assert code in source.values()
    event = messages.event("node-1", "skipped", "modality", message_id="0" * 32, source=source, detail="x")
    schema_validator("event").validate(event)


@pytest.mark.parametrize("field", ["modality", "body_part", "view_position", "photometric"])
@pytest.mark.parametrize("value", ["doe", "Invalid", "invalidx", "unlisted ", "mueller^anna"])
def test_other_lower_case_values_are_refused(field, value):
    source = {"calling_ae": "MODALITY", "sop_class": "CR Image Storage", field: value}
    event = messages.event("node-1", "skipped", "modality", message_id="0" * 32, source=source)
    assert list(schema_validator("event").iter_errors(event)), f"{field}={value!r} passed the schema"
