#!/usr/bin/env python3
"""Public-domain/CC0 test pictures, taken from the scikit-image wheel on PyPI (never committed).

``astronaut.png`` (NASA, public domain: one face) and ``coffee.png`` (CC0: no face) come inside
every scikit-image wheel. pip downloads the wheel for this interpreter (no dependencies, nothing
installed); the two files are extracted into a cache folder and reused afterwards.

    python tools/test_pictures.py [DIR]     # prints the folder holding astronaut.png and coffee.png
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PICTURES = ("astronaut.png", "coffee.png")
REQUIREMENT = "scikit-image>=0.19"


def default_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edged" / "pictures"


def ensure(folder: Path | None = None) -> Path:
    """The folder holding the pictures, fetched on first use."""
    folder = Path(folder or default_dir())
    if all((folder / name).exists() for name in PICTURES):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edged-pictures-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--dest", tmp, REQUIREMENT], check=True, stderr=subprocess.DEVNULL)
        wheel = next(Path(tmp).glob("scikit_image-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for name in PICTURES:
                target = folder / name
                part = target.with_name(name + ".part")
                part.write_bytes(z.read(f"skimage/data/{name}"))
                part.replace(target)
    return folder


if __name__ == "__main__":
    print(ensure(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
