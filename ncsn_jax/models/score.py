"""Score functions: the one type that losses and samplers take, and the one builder from a network.

A score function is `score_fn(x, sigma) -> ∇x log p_σ(x)`, with x (B, H, W, C) and sigma (B,) float32;
its output has x's shape and is already divided by σ (the NCSNv2 networks' output, technique 3).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class _ApplyWithParams:
    # Equal (and equally hashed) for equal modules, unlike the bound method `model.apply`, whose
    # equality is the module's identity: so a rebuilt but identical model reuses compilations.
    model: nn.Module

    def __call__(self, params: Any, x: jax.Array, sigma: jax.Array) -> jax.Array:
        return self.model.apply({"params": params}, x, sigma)


def get_score_fn(model: nn.Module, params: Any) -> ScoreFn:
    """s_θ(x, σ) for x (B, H, W, C) in [0, 1] and σ (B,), from a network and its params.

    A `jax.tree_util.Partial`: passed to a jitted function (such as the samplers) the parameters are
    traced arguments rather than compiled-in constants, so new parameters reuse the compilation.
    """
    return jax.tree_util.Partial(_ApplyWithParams(model), params)
