"""From raw output tensors to what a consumer sees: scores per label, detections (the decoders).

Importing the package registers every decoder (the detection ones live in their own module), so
the manifest validator knows all of them whichever module is imported first.
"""

from edged.postprocess import decode, detection  # noqa: F401  (registers the decoders)
