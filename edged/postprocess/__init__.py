"""From raw output tensors to what a consumer sees: scores per label, detections (the decoders)."""
