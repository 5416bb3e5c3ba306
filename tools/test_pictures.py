#!/usr/bin/env python3
"""Public-domain/CC0 test pictures, taken from the scikit-image wheel on PyPI (never committed).

``astronaut.png`` (NASA, public domain: one face) and ``coffee.png`` (CC0: no face) come inside
every scikit-image wheel. pip downloads the wheel for this interpreter (no dependencies, nothing
installed); the two files are extracted into a cache folder and reused afterwards.

    python tools/test_pictures.py [DIR]     # prints the folder holding astronaut.png and coffee.png

:func:`faces` composes pictures with N faces from the astronaut's head (a grid of copies, the
coffee picture for none) and :func:`two_sizes` one large and one small head, for the secondary
classifier tests and benchmark (``tools/bench_sgie.py``).
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


HEAD = (106, 0, 346, 240)  # a square around the astronaut's face (CenterFace: 182,58-270,178)


def _rgb(path: Path):
    import cv2

    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _write(image, path: Path) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def faces(n: int, out: Path, size: int = 640, folder: Path | None = None) -> Path:
    """A ``size``×``size`` PNG with ``n`` copies of the astronaut's head in a grid (0: the coffee)."""
    import math

    import cv2
    import numpy as np

    src = ensure(folder)
    if n == 0:
        return _write(cv2.resize(_rgb(src / "coffee.png"), (size, size)), out)
    k = math.ceil(math.sqrt(n))
    tile = size // k
    x0, y0, x1, y1 = HEAD
    head = cv2.resize(_rgb(src / "astronaut.png")[y0:y1, x0:x1], (tile, tile), interpolation=cv2.INTER_AREA)
    canvas = np.full((size, size, 3), 90, np.uint8)
    for i in range(n):
        r, c = divmod(i, k)
        canvas[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = head
    return _write(canvas, out)


def two_sizes(out: Path, large: int = 320, small: int = 96, folder: Path | None = None) -> Path:
    """A 640×384 PNG with the astronaut's head at ``large`` and at ``small`` pixels square."""
    import cv2
    import numpy as np

    x0, y0, x1, y1 = HEAD
    head = _rgb(ensure(folder) / "astronaut.png")[y0:y1, x0:x1]
    canvas = np.full((384, 640, 3), 90, np.uint8)
    canvas[32:32 + large, 32:32 + large] = cv2.resize(head, (large, large), interpolation=cv2.INTER_AREA)
    canvas[144:144 + small, 448:448 + small] = cv2.resize(head, (small, small), interpolation=cv2.INTER_AREA)
    return _write(canvas, out)


if __name__ == "__main__":
    print(ensure(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
