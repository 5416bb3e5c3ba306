"""TLS for the associations edged opens to a PACS (the SR destination).

The client side of DICOM TLS (PS3.15 B.12, BCP 195): TLS 1.2 or newer, the PACS's certificate
verified against the configured CA and its host name, our certificate only when the PACS asks
for one. Loaded at ``edged check`` time so a wrong file is a config error, not a failed send.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def client_context(ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None and key_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx
