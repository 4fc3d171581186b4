"""XLA:CPU settings that the networks need to train at full speed on a CPU, applied on import of ncsn_jax.

Convolutions on XLA's own (Eigen) kernels. jaxlib 0.10 and 0.11 hand every convolution to YNNPACK,
whose kernel gradient of a 3×3 convolution runs at about a third of the speed of a matrix product
(32×32×128, batch 8, on 2 cores: 138 ms, against 41 ms on Eigen; the forward pass and the input
gradient are no slower on Eigen). With YNNPACK's convolutions switched off, a CIFAR-10 training step at
batch 8 took 8.3 s instead of 12.3 s on this project's machine. The switch is an XLA flag, read once
when JAX starts its CPU backend, so `use_eigen_convolutions` must run before the first computation:
importing `ncsn_jax` does it. It changes nothing on GPUs and TPUs, leaves a choice already made in
`XLA_FLAGS` alone, and is applied only for the jaxlib versions in which the flag is known to exist (XLA
aborts the process on an unknown flag).
"""
from __future__ import annotations

import importlib.metadata
import os
from typing import MutableMapping

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
EIGEN_CONVOLUTIONS = f"{YNN_FUSION_FLAG}=-individual_convolution"
# jaxlib releases whose XLA knows the flag (the ones requirements.txt admits, each checked).
_JAXLIB_WITH_FLAG = ("0.10.", "0.11.")


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
