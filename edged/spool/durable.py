"""Crash-safe file placement: fsync the data, rename, fsync the directory.

A C-STORE success response is a promise to the modality that it may forget the image; that
promise holds only once both the file data and the directory entry are on stable storage.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
