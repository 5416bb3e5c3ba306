"""Running edged as a system service: sd_notify, journald-friendly logging, rootfs installer.

Nothing in this package may import third-party modules at import time: ``install.py`` is also
copied into the target image and run by the system ``python3`` before the venv exists.
"""

from edged.service.logsetup import setup_logging
from edged.service.sdnotify import Notifier, WatchdogPinger

__all__ = ["Notifier", "WatchdogPinger", "setup_logging"]
