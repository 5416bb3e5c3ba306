"""What ``edged selftest`` checks, in words: ``--help`` prints this without importing the checks
themselves (they load numpy, ONNX Runtime and the worker; help must stay instant)."""

TRT_CHECKS = [
    ("probe", "worker Python, TensorRT, GPU (compute capability, SMs), DLA cores, L4T release vs the JetPack table"),
    ("onnxruntime via worker", "the isolated worker on the daemon's Python equals in-process ONNX Runtime"),
    ("fp32 GPU / fp16 GPU", "engines built on the GPU (never a DLA core), compared with FP32 and timed batch 1..max"),
    ("fp16 DLA<n>", "static engines per batch size on every DLA core, compared and timed"),
    ("int8 build twice", "an INT8 build, then again: the second reuses the calibration and timing caches"),
    ("DLA placement", "where layers really run (engine inspector, TensorRT 8.2+) against the can_run_on_DLA prediction"),
    ("all DLA engines loaded", "every configured DLA engine loaded at once: within 16 loadables per DLA core"),
    ("foreign/corrupt plan", "a plan that is not this TensorRT's, and a truncated one, refused and rebuilt"),
    ("worker killed mid-batch", "SIGKILL during a batch: the batch is retried on a restarted worker"),
]
