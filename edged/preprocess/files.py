"""A DICOM file → a model's input tensor, through the model's own pixel pipeline.

INT8 calibration, the accuracy gate and ``edged engines`` read validation images from disk; they
must see exactly the tensor serving would make, so they come through here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom import dcmread

from edged.models.manifest import LoadedModel
from edged.preprocess.pixels import prepare


def preprocess_file(model: LoadedModel) -> Callable[[Path], np.ndarray]:
    def run(path: Path) -> np.ndarray:
        return prepare(dcmread(path), model.manifest.input, model.manifest.preprocess)

    return run
