"""The emulated-image tests run only through ``make flash-test`` / ``make flash-test-jp5``.

They build an arm64 root filesystem, boot it under qemu-user and take minutes, so ``make test``
(and a plain ``pytest``) skips collecting them; the make targets set ``EDGED_FLASH``.
"""

from __future__ import annotations

import os
from pathlib import Path


def pytest_ignore_collect(collection_path: Path, config) -> bool:
    return not os.environ.get("EDGED_FLASH")
