"""Like pycuda.autoinit: initialize and make a context (recorded)."""
from pycuda import driver

driver.init()
context = driver.Device(0).make_context()
