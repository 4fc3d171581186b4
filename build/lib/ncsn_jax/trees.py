"""Comparing the layout of two parameter trees: the one tree diff behind every "these weights do not fit".

A layout is a flat mapping from a '/'-joined path ("res1_0/conv1/kernel") to a shape, or to a
(shape, dtype) pair where dtypes matter (checkpoints); `differences` lists what separates two of them,
so that a loader can name the first few in one line.
"""
from __future__ import annotations

from typing import Any, Hashable, Mapping

import jax

Layout = Mapping[str, Hashable]


def path_name(key_path: tuple[Any, ...]) -> str:
    """'/'-joined names of a `jax.tree_util` key path (dict keys, attribute names, sequence indices)."""
    parts = []
    for key in key_path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def shapes(tree: Any, with_dtype: bool = False) -> dict[str, Hashable]:
    """The layout of a pytree of arrays (or `jax.ShapeDtypeStruct`s): path → shape (and dtype)."""
    def describe(leaf):
        shape = tuple(leaf.shape)
        return (shape, str(leaf.dtype)) if with_dtype else shape

    return {path_name(key_path): describe(leaf) for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def differences(found: Layout, expected: Layout) -> list[str]:
    """What separates `found` from `expected`, one phrase per path, sorted by path.

    Returns:
      e.g. ["missing res1_0/conv1/kernel", "unexpected fc/bias", "res2_0/conv1/kernel is (3, 3, 8, 8),
      expected (3, 3, 16, 16)"]; empty when the layouts are equal.
    """
    phrases = []
    for name in sorted(found.keys() | expected.keys()):
        if name not in found:
            phrases.append(f"missing {name}")
        elif name not in expected:
            phrases.append(f"unexpected {name}")
        elif found[name] != expected[name]:
            phrases.append(f"{name} is {_show(found[name])}, expected {_show(expected[name])}")
    return phrases


def summary(phrases: list[str], shown: int = 3) -> str:
    """The first `shown` phrases of `differences`, and how many more there are."""
    more = len(phrases) - shown
    return "; ".join(phrases[:shown]) + (f"; and {more} more" if more > 0 else "")


def _show(description: Hashable) -> str:
    if isinstance(description, tuple) and len(description) == 2 and isinstance(description[1], str):
        shape, dtype = description
        return f"{dtype}{list(shape)}"
    return str(tuple(description))
