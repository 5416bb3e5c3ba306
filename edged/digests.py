"""SHA-256 of a file, read in 1 MB blocks: model pins, engine cache keys, staged Python tarballs.

Standard library only, so the install-time code (``edged.service``, which may run on an image's
own Python before the venv exists) and the daemon share one definition.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
