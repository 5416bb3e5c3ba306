"""The UID memo (edged/sources/dicom/uids.py) against the installed pynetdicom and pydicom: the
same answers and errors as upstream's ``set_uid`` and ``UID.is_valid``, remembered only for
conformant standard-root UIDs and only up to its bound, installed everywhere pynetdicom binds
``set_uid``, a negotiation identical to upstream's, and refused on an unverified version."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import pynetdicom
import pytest
from pydicom import __version__ as pydicom_version
from pydicom.uid import UID
from pynetdicom import AE, _config
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification

from edged.sources.dicom import uids, versions

uids.install()

VALUES = [
    "1.2.840.10008.1.2.1",  # a transfer syntax
    " 1.2.840.10008.5.1.4.1.1.1 ",  # CR Image Storage, padded
    b"1.2.840.10008.3.1.1.1",  # the application context, as a PDU carries it
    UID("1.2.840.10008.1.1"),
    "1.2.840.10008.01.2",  # standard root, non-conformant (leading zero)
    "1.2.840.10008." + "1" * 60,  # too long
    b"1.2.840.10008.1.2\x00",  # NUL-padded
    "1.2.826.0.1.3680043.2.1143.1",  # an organisation's root: never remembered
    "",
    None,
    b"\xff\xfe",  # undecodable
    42,
]


def _outcome(fn, value, allow_empty: bool, allow_none: bool) -> tuple:
    try:
        out = fn(value, "abstract_syntax", allow_empty, allow_none, True)
    except Exception as exc:  # the same type and message as upstream is the contract
        return "raised", type(exc).__name__, str(exc)
    return "value", type(out).__name__, None if out is None else str(out)


@pytest.mark.parametrize("allow", [(True, True), (False, False)])
@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_set_uid_answers_as_upstream_first_time_and_from_the_memo(value, allow) -> None:
    upstream = _outcome(uids._upstream_set_uid, value, *allow)
    assert _outcome(uids.set_uid, value, *allow) == upstream
    assert _outcome(uids.set_uid, value, *allow) == upstream  # now possibly remembered


def test_only_conformant_standard_root_uids_are_remembered() -> None:
    for value in VALUES:
        try:
            uids.set_uid(value, "x")
        except (ValueError, TypeError):
            pass
    remembered = {key[0] for key in uids._set_uid_memo}
    assert {"1.2.840.10008.1.2.1", "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.3.1.1.1"} <= remembered
    assert all(key.startswith(uids.STANDARD_ROOT) and UID(key).is_valid for key in remembered)
    assert not any(key.startswith("1.2.826.") for key in uids._is_valid_memo)


def test_is_valid_answers_as_upstream() -> None:
    assert UID.is_valid.fget is uids.is_valid
    for value in ["1.2.840.10008.1.2", "1.2.840.10008.01", "1.2.840.10008." + "9" * 60, "1.2.3.4", "1.2..3"]:
        assert UID(value).is_valid is uids._upstream_is_valid(UID(value))
        assert UID(value).is_valid is uids._upstream_is_valid(UID(value))


def test_a_changed_validator_is_not_served_from_the_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    uids.set_uid("1.2.840.10008.1.2", "transfer_syntax")
    monkeypatch.setitem(_config.VALIDATORS, "UI", lambda value: (False, "refused by a site validator"))
    with pytest.raises(ValueError, match="refused by a site validator"):
        uids.set_uid("1.2.840.10008.1.2", "transfer_syntax")


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer proposing invented standard-root UIDs cannot grow it: past the bound, upstream answers."""
    monkeypatch.setattr(uids, "_set_uid_memo", {})
    monkeypatch.setattr(uids, "_is_valid_memo", {})
    monkeypatch.setattr(uids, "MAX_REMEMBERED", 16)
    for i in range(200):
        value = f"1.2.840.10008.999.{i}"
        assert str(uids.set_uid(value, "abstract_syntax")) == value
        assert UID(value).is_valid
    assert len(uids._set_uid_memo) == 16 and len(uids._is_valid_memo) == 16


def test_every_pynetdicom_module_binding_set_uid_gets_the_memo() -> None:
    """A pynetdicom release that imports set_uid in another module fails here, loudly."""
    for info in pkgutil.iter_modules(pynetdicom.__path__):
        if info.name in ("__main__",) or info.name.startswith("apps"):
            continue
        module = importlib.import_module(f"pynetdicom.{info.name}")
        assert getattr(module, "set_uid", None) is not uids._upstream_set_uid, module.__name__


def test_installed_versions_are_verified() -> None:
    assert pydicom_version in uids.PYDICOM_VERIFIED, "read pydicom's UID.is_valid, then add the version"
    versions.check_pynetdicom()


def test_an_unverified_pynetdicom_names_the_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(versions, "REACTOR_VERIFIED", versions.REACTOR_VERIFIED + ("3.0.2",))
    with pytest.raises(versions.UnsupportedPynetdicom, match=r"uids\.py.*UIDS_VERIFIED"):
        versions.check_pynetdicom("3.0.2")


NEGOTIATE = r"""
import json, sys
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext, StoragePresentationContexts, negotiate_as_acceptor
if sys.argv[1] == "memo":
    from edged.sources.dicom import uids; uids.install()
syntaxes = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.99"]
rq = A_ASSOCIATE()
rq.application_context_name = "1.2.840.10008.3.1.1.1"
rq.calling_ae_title, rq.called_ae_title, rq.maximum_length_received = "MODALITY", "EDGED", 16384
rq.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.2.0.0"
proposed = []
for i, cx in enumerate(StoragePresentationContexts[:127]):
    pc = PresentationContext()
    pc.context_id, pc.abstract_syntax = 2 * i + 1, cx.abstract_syntax
    pc.transfer_syntax = syntaxes[: 1 + i % 4]
    proposed.append(pc)
odd = PresentationContext(); odd.context_id, odd.abstract_syntax = 255, "1.2.840.10008.77.1"
odd.transfer_syntax = ["1.2.840.10008.1.2"]
rq.presentation_context_definition_list = proposed + [odd]
pdu = A_ASSOCIATE_RQ(); pdu.from_primitive(rq); data = pdu.encode()
for _ in range(2):  # the second time from the memo
    got = A_ASSOCIATE_RQ(); got.decode(data)
    supported = []
    for i, cx in enumerate(StoragePresentationContexts[::2]):
        pc = PresentationContext(); pc.abstract_syntax = cx.abstract_syntax
        pc.transfer_syntax = syntaxes[1:3]
        supported.append(pc)
    result, roles = negotiate_as_acceptor(got.to_primitive().presentation_context_definition_list, supported)
print(json.dumps([[c.context_id, str(c.abstract_syntax), c.result, [str(t) for t in c.transfer_syntax]]
                  for c in result]))
"""


def test_a_negotiation_of_every_storage_context_is_the_same_with_the_memo() -> None:
    runs = {}
    for mode in ("upstream", "memo"):
        out = subprocess.run([sys.executable, "-c", NEGOTIATE, mode], capture_output=True, text=True, check=True)
        runs[mode] = json.loads(out.stdout)
    assert len(runs["upstream"]) > 100 and {r[2] for r in runs["upstream"]} >= {0, 3}  # accepted and refused
    assert runs["memo"] == runs["upstream"]


def test_edgeds_listener_installs_the_memo(listener) -> None:
    """Through edged's own server: an association's standard UIDs end up remembered."""
    port, _, _, _ = listener
    scu = AE(ae_title="MODALITY")
    scu.add_requested_context(Verification)
    for cx in StoragePresentationContexts[:20]:
        scu.add_requested_context(cx.abstract_syntax)
    assoc = scu.associate("127.0.0.1", port, ae_title="EDGED")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert (str(StoragePresentationContexts[0].abstract_syntax), True) in {k[:2] for k in uids._set_uid_memo}
