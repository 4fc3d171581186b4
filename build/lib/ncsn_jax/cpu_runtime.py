"""CPU settings that the networks need to train at full speed: XLA's own convolutions and an allocator.

Convolutions on XLA's own (Eigen) kernels. jaxlib 0.10 and 0.11 hand every convolution to YNNPACK, whose
kernel gradient of a 3×3 convolution runs at about a third of the speed of a matrix product (32×32×128,
batch 8, on 2 cores: 138 ms, against 41 ms on Eigen; the forward pass and the input gradient are no
slower on Eigen). A CIFAR-10 training step at batch 8 took 1.56 times as long as the official PyTorch
code's on YNNPACK, and 0.94 times as long on Eigen (each measured beside it). The switch is an XLA flag,
read once when JAX starts its CPU backend, so `use_eigen_convolutions` must run before the first
computation: importing `ncsn_jax` does it. It changes nothing on GPUs and TPUs, leaves a choice already
made in `XLA_FLAGS` alone, and is applied only for the jaxlib versions in which the flag is known to
exist (XLA aborts the process on an unknown flag).

An allocator that keeps freed memory. Every call of a compiled XLA:CPU program allocates its temporary
buffers as one block (150 MB for a training step of the MNIST default, 900 MB for CIFAR-10 at batch 8)
and frees it at the end. glibc's malloc serves such a block with `mmap` and gives it back with `munmap`,
so each step touches all of it as fresh pages: a page fault per 4 KiB (37,000 a step at MNIST, 325 ms a
step instead of 264 with mimalloc). glibc's own settings cannot fix this from inside the process (a
thread's arena mmaps any block over 64 MiB whatever the thresholds; one arena for all threads makes them
wait on its lock: 960 ms a step instead of 630). mimalloc keeps the memory (0 faults), and it ships as a
wheel (`cmeel-mimalloc`, in requirements.txt), so `main.py` starts itself again with it preloaded
(`exec_with_mimalloc`) before anything else is imported. `NCSN_JAX_ALLOCATOR=system` keeps glibc's.
"""
from __future__ import annotations

import importlib.metadata
import os
import sys
from typing import MutableMapping

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
EIGEN_CONVOLUTIONS = f"{YNN_FUSION_FLAG}=-individual_convolution"
# jaxlib releases whose XLA knows the flag (the ones requirements.txt admits, each checked).
_JAXLIB_WITH_FLAG = ("0.10.", "0.11.")

ALLOCATOR_VARIABLE = "NCSN_JAX_ALLOCATOR"
_MIMALLOC_FILE = "libmimalloc.so.3"
# Freed memory is kept for reuse (mimalloc would otherwise return it to the OS after 10 ms, and the
# next step would fault it in again).
_MIMALLOC_OPTIONS = {"MIMALLOC_PURGE_DELAY": "-1"}


def _jaxlib_version() -> str | None:
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return None


def use_eigen_convolutions(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Adds the flag that keeps CPU convolutions on XLA's own kernels to `XLA_FLAGS`, where it is safe.

    Args:
      environ: the environment to edit (the process's own by default).

    Returns:
      True if the flag was added; False if `XLA_FLAGS` already sets it (the user's choice stands) or the
      installed jaxlib is not one in which the flag is known.
    """
    flags = environ.get("XLA_FLAGS", "")
    version = _jaxlib_version()
    if YNN_FUSION_FLAG in flags or version is None or not version.startswith(_JAXLIB_WITH_FLAG):
        return False
    environ["XLA_FLAGS"] = f"{flags} {EIGEN_CONVOLUTIONS}".strip()
    return True


def mimalloc_library() -> str | None:
    """The path of the mimalloc shared library installed by the `cmeel-mimalloc` wheel, if any."""
    try:
        files = importlib.metadata.files("cmeel-mimalloc") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == _MIMALLOC_FILE:
            path = str(file.locate())
            return path if os.path.exists(path) else None
    return None


def exec_with_mimalloc(environ: MutableMapping[str, str] = os.environ) -> None:
    """Restarts this Python program with mimalloc preloaded, unless it runs with it already.

    Call it first thing in a program's entry point (before JAX or NumPy allocate). The new process runs
    the same command line (`sys.orig_argv`) with `LD_PRELOAD` naming mimalloc and `NCSN_JAX_ALLOCATOR`
    set to `mimalloc`, so it does not restart again. Nothing happens off Linux, without the
    `cmeel-mimalloc` wheel, when `LD_PRELOAD` already names a library (the user's own allocator stands),
    or when `NCSN_JAX_ALLOCATOR` is set (to `system`: keep glibc's malloc).
    """
    if not sys.platform.startswith("linux") or environ.get(ALLOCATOR_VARIABLE) or environ.get("LD_PRELOAD"):
        return
    library = mimalloc_library()
    if library is None:
        return
    child = dict(environ, LD_PRELOAD=library, **{ALLOCATOR_VARIABLE: "mimalloc"})
    for name, value in _MIMALLOC_OPTIONS.items():
        child.setdefault(name, value)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, child)
