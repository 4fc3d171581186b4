"""Images leaving the program: the one place they are clamped to [0, 1], rounded to 8 bits, tiled and saved.

Samplers never clamp (as the official code); what is written as PNG, and what sample-quality features
are computed from, goes through `to_8bit` here.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ncsn_jax.run import files


def to_8bit(images: np.ndarray) -> np.ndarray:
    """uint8 pixel levels: images clipped to [0, 1], times 255, rounded to the nearest integer."""
    return np.round(np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def to_8bit_levels(images: np.ndarray) -> np.ndarray:
    """`to_8bit` as float32 in [0, 1] (multiples of 1/255): samples as if saved as 8-bit images and read back."""
    return to_8bit(images).astype(np.float32) / 255.0


def make_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tiles (N, H, W, C) images in [0, 1] into one uint8 (rows·(H+p)+p, nrow·(W+p)+p, C) image.

    Values are clamped to [0, 1] and rounded by `to_8bit`. `nrow` images per row (default: ⌈√N⌉);
    padding pixels are black.
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, H, W, C), got {images.shape}")
    n, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), np.uint8)
    pixels = to_8bit(images)
    for index, image in enumerate(pixels):
        top = padding + (index // nrow) * (h + padding)
        left = padding + (index % nrow) * (w + padding)
        grid[top:top + h, left:left + w] = image
    return grid


def save_grid(images: np.ndarray, path: str | os.PathLike, nrow: int | None = None) -> None:
    """Writes `make_grid(images, nrow)` to `path` (local or gs://, ...) as PNG, whole (see `files`)."""
    files.save_png(path, make_grid(images, nrow))
