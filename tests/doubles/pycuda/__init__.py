"""Test double of pycuda: "device memory" is host memory addressed by fake pointers.

Python 3.6 compatible, like the code under test. ``EDGED_CUDA_DOUBLE_DEVICES=0`` makes
``init()`` fail the way a machine without a GPU does.
"""
