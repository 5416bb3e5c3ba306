"""TensorRT / DLA engines: build on the device, cache with a complete key, gate accuracy, serve
through the isolated worker.

Daemon side (Python >= 3.10): ``config`` (TensorRTConfig), ``cache`` + ``lock`` (engine cache),
``builder`` (runs the build process), ``engines`` (which engines a model needs), ``gate``
(accuracy gate), ``selection`` (``select_backend``), ``cli`` (``edged engines``/``selftest``).
Device side (Python 3.6+ syntax, run by the Jetson system Python): ``trt_build.py`` (builder
script) and ``trt_runtime.py`` (the worker's TensorRT host). Nothing here imports tensorrt into
the daemon.
"""
