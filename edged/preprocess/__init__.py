"""DICOM pixels → model input tensors.

The grey-level chain (Modality LUT → VOI → [0, 1] → MONOCHROME1 inversion) is folded into one
cached lookup table so a full-size CR costs a single gather plus one area resize; see
:mod:`edged.preprocess.pixels` for the pipeline and :mod:`edged.preprocess.luts` for the maths.
"""

from edged.preprocess.pixels import PixelError, prepare, prepare_timed

__all__ = ["PixelError", "prepare", "prepare_timed"]
