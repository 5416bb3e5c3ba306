"""Like pycuda.autoprimaryctx (pycuda >= 2021.1): retain the primary context and push it."""
import atexit

import pycuda
from pycuda import driver

if pycuda.VERSION < (2021, 1):  # the module arrived in pycuda 2021.1
    raise ImportError("No module named 'pycuda.autoprimaryctx'")

driver.init()
context = driver.Device(0).retain_primary_context()
context.push()
device = context.get_device()


def _finish_up():
    global context
    context.pop()
    context = None


atexit.register(_finish_up)
