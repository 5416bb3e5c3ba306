"""Which pynetdicom versions edged's DICOM transport was verified against, checked without
importing pynetdicom (``edged check`` must stay light; the package metadata says the version).
"""

from __future__ import annotations

# Read in full: 3.0.4. Diffed against 3.0.0-3.0.3 for every method overridden or relied on here
# and in receive.py (dul.py, transport.py, association.py, dimse.py, dimse_messages.py,
# service_class.py, fsm.py): unchanged there.
VERIFIED_PYNETDICOM = ("3.0.0", "3.0.1", "3.0.2", "3.0.3", "3.0.4")
# The receive fast path (fastpath.py) replaces more of pynetdicom's per-PDU path; it has its own
# list so that verifying the transport against a new release does not silently cover it too.
FASTPATH_VERIFIED = ("3.0.0", "3.0.1", "3.0.2", "3.0.3", "3.0.4")
# The event-driven reactors (reactor.py) replace Association._run_reactor and the DUL's queues,
# kill and stop. Compared function by function (AST) with 3.0.4 in 3.0.0, 3.0.1 and 3.0.3:
# identical. 3.0.2 is not on the package index these machines reach, so it is not listed.
REACTOR_VERIFIED = ("3.0.0", "3.0.1", "3.0.3", "3.0.4")
# uids.py replaces utils.set_uid in every module that imports it by name. set_uid, decode_bytes'
# use and the importing modules (ae, dimse_primitives, pdu_items, pdu_primitives, presentation)
# compared in 3.0.0, 3.0.1, 3.0.3 and 3.0.4: identical; 3.0.2 is not on the index.
UIDS_VERIFIED = ("3.0.0", "3.0.1", "3.0.3", "3.0.4")


#: (list, what relies on pynetdicom internals, what to verify before adding a version to the list)
_GUARDED = (
    ("VERIFIED_PYNETDICOM", "DICOM transport (edged/sources/dicom/transport.py, receive.py) overrides",
     "the overrides"),
    ("FASTPATH_VERIFIED", "DICOM receive fast path (edged/sources/dicom/fastpath.py: read-ahead recv_into, "
     "dataset fragments written without the per-PDU state machine) replaces", "fastpath.py"),
    ("REACTOR_VERIFIED", "association reactors (edged/sources/dicom/reactor.py: threads woken by events instead "
     "of polling every millisecond) replace", "reactor.py and GuardedAssociation._run_reactor"),
    ("UIDS_VERIFIED", "UID memo (edged/sources/dicom/uids.py: the standard's UIDs checked once per process) "
     "replaces", "uids.py and the modules that import set_uid"),
)


class UnsupportedPynetdicom(RuntimeError):
    pass


def check_pynetdicom(version: str | None = None) -> None:
    """Raise :class:`UnsupportedPynetdicom` unless the installed pynetdicom is one whose
    internals this module and :mod:`~edged.sources.dicom.receive` were verified against."""
    if version is None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as installed

        try:
            version = installed("pynetdicom")
        except PackageNotFoundError:
            version = "not installed"
    for name, what, verify in _GUARDED:
        verified = globals()[name]  # looked up now: a test may widen a list
        if version not in verified:
            raise UnsupportedPynetdicom(
                f"pynetdicom {version} is installed, but edged's {what} pynetdicom internals verified only "
                f"against {', '.join(verified)}: install one of those (pip install 'pynetdicom==3.0.4'), or "
                f"verify {verify} against this version and add it to {name}")
