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
    if version not in VERIFIED_PYNETDICOM:
        raise UnsupportedPynetdicom(
            f"pynetdicom {version} is installed, but edged's DICOM transport (edged/sources/dicom/transport.py, "
            f"receive.py) overrides pynetdicom internals verified only against {', '.join(VERIFIED_PYNETDICOM)}: "
            "install one of those (pip install 'pynetdicom==3.0.4'), or verify the overrides against this "
            "version and add it to VERIFIED_PYNETDICOM")
    if version not in FASTPATH_VERIFIED:
        raise UnsupportedPynetdicom(
            f"pynetdicom {version} is installed, but edged's DICOM receive fast path "
            "(edged/sources/dicom/fastpath.py: read-ahead recv_into, dataset fragments written without the "
            f"per-PDU state machine) replaces pynetdicom internals verified only against "
            f"{', '.join(FASTPATH_VERIFIED)}: install one of those, or verify fastpath.py against this version "
            "and add it to FASTPATH_VERIFIED")
    if version not in REACTOR_VERIFIED:
        raise UnsupportedPynetdicom(
            f"pynetdicom {version} is installed, but edged's association reactors "
            "(edged/sources/dicom/reactor.py: threads woken by events instead of polling every millisecond) "
            f"replace pynetdicom internals verified only against {', '.join(REACTOR_VERIFIED)}: install one of "
            "those, or verify reactor.py and GuardedAssociation._run_reactor against this version and add it to "
            "REACTOR_VERIFIED")
