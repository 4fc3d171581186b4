"""CPU settings that the networks need to train at full speed: XLA's own convolutions and an allocator.

Convolutions on XLA's own (Eigen) kernels. jaxlib 0.10 to 0.12 hand every convolution to YNNPACK, whose
kernel gradient of a 3×3 convolution runs at about a third of the speed of a matrix product (32×32×128,
batch 8, on 2 cores: 138 ms, against 41 ms on Eigen; the forward pass and the input gradient are no
slower on Eigen). A CIFAR-10 training step at batch 8 took 1.56 times as long as the official PyTorch
code's on YNNPACK, and 0.94 times as long on Eigen (each measured beside it). The switch is an XLA flag,
read once when JAX starts its CPU backend, so `use_eigen_convolutions` must run before the first
computation: importing `ncsn_jax` does it. It is set only where JAX will compute on the CPU (below),
leaves a choice already made in `XLA_FLAGS` alone, and is applied only for the jaxlib versions in which
the flag is known to exist (XLA aborts the process on an unknown flag).

An allocator that keeps freed memory. Every call of a compiled XLA:CPU program allocates its temporary
buffers as one block (150 MB for a training step of the MNIST default, 900 MB for CIFAR-10 at batch 8)
and frees it at the end. glibc's malloc serves such a block with `mmap` and gives it back with `munmap`,
so each step touches all of it as fresh pages: a page fault per 4 KiB (37,000 a step at MNIST, 325 ms a
step instead of 264 with mimalloc). glibc's own settings cannot fix this from inside the process (a
thread's arena mmaps any block over 64 MiB whatever the thresholds; one arena for all threads makes them
wait on its lock: 960 ms a step instead of 630). mimalloc keeps the memory (0 faults), and it ships as a
wheel (`cmeel-mimalloc`, in requirements.txt), so `main.py` starts itself again with it preloaded
(`exec_with_mimalloc`) before anything else is imported. `NCSN_JAX_ALLOCATOR=system` keeps glibc's.

Both are measured on CPUs only, so both apply only where JAX will compute on its CPU backend
(`runs_on_cpu`). That is decided before JAX is imported, as JAX will decide it: from `JAX_PLATFORMS`
(its first platform is the one JAX uses) or, without it, from whether an accelerator plugin of JAX (a
CUDA or ROCm plugin, libtpu) is installed, since JAX then picks that accelerator.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from typing import Callable, Iterable, Mapping, MutableMapping

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
EIGEN_CONVOLUTIONS = f"{YNN_FUSION_FLAG}=-individual_convolution"
# jaxlib releases whose XLA knows the flag (the ones pyproject.toml admits, each checked; all of them hand
# convolutions to YNNPACK without it).
_JAXLIB_WITH_FLAG = ("0.10.", "0.11.", "0.12.")

# Distributions that give JAX an accelerator backend, which JAX prefers to the CPU when one is installed.
_ACCELERATOR_PLUGIN = re.compile(r"jax-(cuda|rocm)\d+-plugin|libtpu(-nightly)?")

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


def _installed_distributions() -> Iterable[str]:
    return (distribution.metadata["Name"] or "" for distribution in importlib.metadata.distributions())


def runs_on_cpu(environ: Mapping[str, str], installed_distributions: Callable[[], Iterable[str]]) -> bool:
    """Whether JAX, once imported with this environment, will compute on its CPU backend.

    Args:
      environ: the environment JAX will start with; `JAX_PLATFORMS` (e.g. "cpu", "cuda", "tpu,cpu"), if
        set and not empty, names the platforms in the order JAX tries them.
      installed_distributions: returns the names of the installed Python distributions; called only when
        `JAX_PLATFORMS` does not decide.

    Returns:
      True if `JAX_PLATFORMS` names cpu first, or if it is unset and no accelerator plugin of JAX
      (jax-cuda12-plugin, jax-cuda13-plugin, a ROCm plugin, libtpu) is installed.
    """
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    names = (re.sub(r"[-_.]+", "-", name).lower() for name in installed_distributions())
    return not any(_ACCELERATOR_PLUGIN.fullmatch(name) for name in names)


def use_eigen_convolutions(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Adds the flag that keeps CPU convolutions on XLA's own kernels to `XLA_FLAGS`, where it is safe.

    Args:
      environ: the environment to edit (the process's own by default).

    Returns:
      True if the flag was added; False if `XLA_FLAGS` already sets it (the user's choice stands), the
      installed jaxlib is not one in which the flag is known, or JAX will not run on the CPU
      (`runs_on_cpu`).
    """
    flags = environ.get("XLA_FLAGS", "")
    version = _jaxlib_version()
    if YNN_FUSION_FLAG in flags or version is None or not version.startswith(_JAXLIB_WITH_FLAG):
        return False
    if not runs_on_cpu(environ, _installed_distributions):
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
    set to `mimalloc`, so it does not restart again. Nothing happens off Linux, where JAX will not run on
    the CPU (`runs_on_cpu`), without the `cmeel-mimalloc` wheel, when `LD_PRELOAD` already names a library
    (the user's own allocator stands), or when `NCSN_JAX_ALLOCATOR` is set (to `system`: keep glibc's malloc).
    """
    if not sys.platform.startswith("linux") or environ.get(ALLOCATOR_VARIABLE) or environ.get("LD_PRELOAD"):
        return
    if not runs_on_cpu(environ, _installed_distributions):
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
