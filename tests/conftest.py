"""Test setup: four fake CPU devices, so data-parallel code is exercised without accelerators.

XLA reads the flag once, when jax is first imported, so it must be set here, before any test module
imports jax.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import ncsn_jax  # noqa: E402,F401  (sets ncsn_jax's XLA:CPU flag, which is read when JAX starts too)
