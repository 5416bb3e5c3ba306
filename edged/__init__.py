"""edged: an inference daemon for NVIDIA Jetson that serves DICOM and camera sources."""

__version__ = "0.1.0"
