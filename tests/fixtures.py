"""The official-code reference (tests/data/ref_cifar10_ngf16.npz), made with ermongroup/ncsnv2.

See tests/data/README.md for how it was made. Arrays are NCHW there; these helpers hand out NHWC.
"""
import functools
import pathlib

import numpy as np

REFERENCE = pathlib.Path(__file__).parent / "data" / "ref_cifar10_ngf16.npz"


@functools.lru_cache(maxsize=None)
def reference() -> dict:
    with np.load(REFERENCE) as data:
        return {k: data[k] for k in data.files}


def nhwc(a: np.ndarray) -> np.ndarray:
    return np.transpose(a, (0, 2, 3, 1))


def official_state_dict() -> dict:
    """The official model's state_dict (no `module.` prefix), sigmas buffer included."""
    return {k[len("param/"):]: v for k, v in reference().items() if k.startswith("param/")}
