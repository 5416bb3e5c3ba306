"""A validation file → a model's input tensor, through the model's own pixel pipeline.

INT8 calibration, the accuracy gate and ``edged engines`` read validation images from disk; they
must see exactly the tensor serving would make, so they come through here: DICOM files for
models that serve DICOM, image files (PNG, JPEG) through the frame pipeline for camera models.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom import dcmread

from edged.models.manifest import LoadedModel
from edged.preprocess.frames import prepare_frame, read_image
from edged.preprocess.pixels import prepare


def preprocess_file(model: LoadedModel) -> Callable[[Path], np.ndarray]:
    manifest = model.manifest
    if "dicom" not in manifest.sources:
        def frame(path: Path) -> np.ndarray:
            return prepare_frame(read_image(path), manifest.input, manifest.preprocess)[0]

        return frame

    def run(path: Path) -> np.ndarray:
        return prepare(dcmread(path), manifest.input, manifest.preprocess)

    return run
