"""Multi-device tests as ordinary pytest functions: 4 fake CPU devices.

XLA reads the device count when jax starts its backend, so the flags are set here, before
any test module of this package imports jax. Run this package in its own pytest process
(`python -m pytest tests/multidevice`): in a process that has already started jax with
one device these tests fail their device-count check.
"""
import os

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
os.environ['JAX_PLATFORMS'] = 'cpu'
