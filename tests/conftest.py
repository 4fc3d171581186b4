"""Test setup: four fake CPU devices, so data-parallel code is exercised without accelerators, and one
persistent XLA compilation cache for the whole run.

XLA reads the flag once, when jax is first imported, so it must be set here, before any test module
imports jax.

Most of the suite's time is compiling: dozens of tests run main.py in a fresh process on the same tiny
configs, and each process compiled the same train step, sampler and eval programs again (a tiny MNIST
run took 69 s with a cold cache, 26 s with a warm one). The cache directory is made once per run, here,
in the process that pytest starts first, so that pytest-xdist's workers and every program they start
(they inherit the environment) share it; it is deleted when that process ends. A
JAX_COMPILATION_CACHE_DIR of your own is used instead, and kept.
"""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ncsn_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import ncsn_jax  # noqa: E402,F401  (sets ncsn_jax's XLA:CPU flag, which is read when JAX starts too)
