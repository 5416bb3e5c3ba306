"""Test double of pycuda (see driver.py for what it models and its knobs).

``EDGED_PYCUDA_DOUBLE_VERSION`` (default 2021.1) stands for the installed pycuda release:
``pycuda.autoprimaryctx`` exists from 2021.1 on, so an older one makes importing it fail.
"""
import os

VERSION = tuple(int(p) for p in os.environ.get("EDGED_PYCUDA_DOUBLE_VERSION", "2021.1").split("."))
VERSION_TEXT = "%d.%d" % VERSION[:2]
