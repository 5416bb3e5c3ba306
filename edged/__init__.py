"""edged: an inference daemon for NVIDIA Jetson that serves DICOM and camera sources.

Importing the package turns ONNX Runtime's telemetry off before anything can import
onnxruntime: ORT >= 1.2x otherwise writes a device id and queued usage events for a Microsoft
endpoint under ``~/.cache/Microsoft/DeveloperTools/.onnxruntime`` (OS, process path, device
hash), which a hospital device must never do. Only the environment variable, read when the
library loads, stops it (``disable_telemetry_events()`` does not); every entry point (``edged``,
``edgectl``, ``python -m edged``) imports this package first, child processes inherit the
variable, and the systemd units set it as well.
"""

import os

os.environ["ORT_DISABLE_TELEMETRY"] = "1"

__version__ = "0.1.0"
