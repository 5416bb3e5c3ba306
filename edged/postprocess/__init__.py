"""From raw output tensors to what a consumer sees: scores per label, detections (the decoders).

:mod:`edged.postprocess.decode` is the registry; the detection decoders live in
:mod:`edged.postprocess.detection`, which the registry imports when one is first used.
"""
