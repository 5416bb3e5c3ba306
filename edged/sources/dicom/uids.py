"""The DICOM standard's own UIDs, checked once per process instead of at every use.

Why: every association proposes its presentation contexts afresh, and pynetdicom 3.0 turns each
abstract and transfer syntax UID into a pydicom ``UID`` and validates it several times on the
way (``set_uid``: a new ``UID``, the configured validator, which makes another, and the
conformance regex for a warning nobody logs; ``UID.is_valid`` again in ``add_transfer_syntax``
and the negotiation). DCMTK ``storescu`` proposes 128 contexts: decoding its A-ASSOCIATE-RQ,
negotiating and encoding the answer took 6.2 ms of CPU, 3.4 ms with this module (issue #14). A
modality that opens an association per image pays that per image.

What is remembered: only UIDs under the standard's root ``1.2.840.10008.`` (SOP classes,
transfer syntaxes, the application context: the same few hundred in every association), and
about :data:`MAX_REMEMBERED` of them (threads negotiating at the moment the bound is reached may
each add one more), so a peer proposing invented ones cannot grow memory: past the bound every
UID is checked as before. Never a UID under an organisation's root, such as an
instance's (those identify a patient's study and must not be kept).

What stays the same: both replacements are pure functions of the UID's string, as upstream's.
``set_uid`` remembers a value only after upstream's own ``set_uid`` accepted it as conformant,
keyed by the string, the ``validate`` flag, the configured ``VALIDATORS["UI"]`` and
``ENFORCE_UID_CONFORMANCE`` (a changed validator starts afresh); it returns an equal ``UID``
(one shared object per string: ``UID`` is an immutable ``str``; one carrying a private
transfer-syntax encoding is never remembered). Anything else — bytes that do not decode, empty,
None, non-conformant, too long, another root — goes to upstream's function unchanged, with its
errors and warnings. ``UID.is_valid`` remembers its answer for standard-root UIDs.

Upstream equivalents: ``pynetdicom/utils.py set_uid`` (3.0.0-3.0.4 identical, as are the modules
that import it by name: ae, dimse_primitives, pdu_items, pdu_primitives, presentation) and
``pydicom/uid.py UID.is_valid`` (3.0.0-3.0.2 identical). pynetdicom is guarded by
:data:`edged.sources.dicom.versions.UIDS_VERIFIED` (the daemon refuses another version); with a
pydicom outside :data:`PYDICOM_VERIFIED` the ``is_valid`` memo is left out (upstream's runs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("edged.dicom")

STANDARD_ROOT = "1.2.840.10008."
#: The standard defines a few hundred UIDs under its root; more than this are not remembered.
MAX_REMEMBERED = 2048
#: pydicom releases whose ``UID.is_valid`` was read (``len(self) <= 64 and re.match(RE_VALID_UID, self)``).
PYDICOM_VERIFIED = ("3.0.0", "3.0.1", "3.0.2")
#: pynetdicom modules that bind ``set_uid`` by name (3.0.0-3.0.4).
_SET_UID_MODULES = ("utils", "ae", "dimse_primitives", "pdu_items", "pdu_primitives", "presentation")

_upstream_set_uid: Callable[..., Any] | None = None
_decode_bytes: Callable[[bytes], str] | None = None
_config: Any = None  # pynetdicom._config, bound by install()
_upstream_is_valid: Callable[[Any], bool] | None = None
_set_uid_memo: dict[tuple, Any] = {}
_is_valid_memo: dict[str, bool] = {}


def install() -> None:
    """Replace pynetdicom's ``set_uid`` everywhere it is bound and pydicom's ``UID.is_valid``
    (the latter only for a verified pydicom). Idempotent; call after
    :func:`edged.sources.dicom.versions.check_pynetdicom`."""
    global _upstream_set_uid, _upstream_is_valid, _decode_bytes, _config
    import importlib

    from pydicom import __version__ as pydicom_version
    from pydicom.uid import UID

    if _upstream_set_uid is None:
        from pynetdicom import _config as config
        from pynetdicom import utils

        _upstream_set_uid, _decode_bytes, _config = utils.set_uid, utils.decode_bytes, config
        for name in _SET_UID_MODULES:
            module = importlib.import_module(f"pynetdicom.{name}")
            if getattr(module, "set_uid", None) is _upstream_set_uid:
                module.set_uid = set_uid  # type: ignore[attr-defined]
    if _upstream_is_valid is None:
        if pydicom_version not in PYDICOM_VERIFIED:
            log.info("pydicom %s: UID.is_valid not verified, its answers are not remembered", pydicom_version)
            return
        _upstream_is_valid = UID.is_valid.fget
        UID.is_valid = property(is_valid, doc=UID.is_valid.__doc__)  # type: ignore[assignment]


def set_uid(value: Any, name: str, allow_empty: bool = True, allow_none: bool = True, validate: bool = True) -> Any:
    """Upstream ``set_uid``, remembered for conformant standard-root UIDs (see module)."""
    assert _upstream_set_uid is not None and _decode_bytes is not None
    if isinstance(value, bytes):
        value = _decode_bytes(value)  # what upstream does first with bytes (and its errors)
    key = _key(value, validate)
    if key is None:
        return _upstream_set_uid(value, name, allow_empty, allow_none, validate)
    known = _set_uid_memo.get(key)
    if known is not None:
        return known
    out = _upstream_set_uid(value, name, allow_empty, allow_none, validate)
    if out is not None and out.is_valid and len(_set_uid_memo) < MAX_REMEMBERED:
        _set_uid_memo[key] = out
    return out


def _key(value: Any, validate: bool) -> tuple | None:
    """The memo's key for ``value`` (a str: bytes are decoded first), None for what is not
    remembered."""
    if not isinstance(value, str) or "_PRIVATE_TS_ENCODING" in getattr(value, "__dict__", ()):
        return None
    text = str(value).strip()  # as UID() strips it: values that differ only there are equal UIDs
    if not text.startswith(STANDARD_ROOT):
        return None
    return text, validate, _config.VALIDATORS.get("UI"), _config.ENFORCE_UID_CONFORMANCE


def is_valid(self: Any) -> bool:
    """Upstream ``UID.is_valid``, remembered for standard-root UIDs."""
    assert _upstream_is_valid is not None
    if not self.startswith(STANDARD_ROOT):
        return _upstream_is_valid(self)
    known = _is_valid_memo.get(self)
    if known is None:
        known = _upstream_is_valid(self)
        if len(_is_valid_memo) < MAX_REMEMBERED:
            _is_valid_memo[str(self)] = known
    return known
