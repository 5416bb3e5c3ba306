"""Like pycuda.autoinit: initialize CUDA and create a *new* context, current on this thread."""
import atexit

from pycuda import driver

driver.init()
context = driver.Device(0).make_context()
device = context.get_device()
atexit.register(context.pop)
