"""Isolated inference workers: the model runs in a child process on a chosen Python.

``child.py`` is the child (Python 3.6 syntax, numpy only, runnable by path); ``process.py``
owns one running child; ``backend.py`` is the ``WorkerBackend`` with retry, timeout and
restart back-off; ``probe.py`` asks an interpreter what it can host.
"""

from edged.backends.worker.backend import EventCallback, WorkerBackend, WorkerLoadError
from edged.backends.worker.probe import probe_python

__all__ = ["EventCallback", "WorkerBackend", "WorkerLoadError", "probe_python"]
