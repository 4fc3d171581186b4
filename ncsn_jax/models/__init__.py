"""Score networks of the NCSNv2 family, chosen by `config.model.name`."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ncsn_jax.models.ncsnv2 import NCSNv2, NCSNv2Deeper, NCSNv2Deepest, RefineNetScore

MODELS = {"ncsnv2": NCSNv2, "ncsnv2_deeper": NCSNv2Deeper, "ncsnv2_deepest": NCSNv2Deepest}
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def get_model(config: ml_collections.ConfigDict) -> RefineNetScore:
    """Builds the network named by `config.model.name` with `config.model.ngf` and `config.data.channels`.

    `config.model.dtype` (optional, default 'float32') is the compute dtype; 'bfloat16' halves activation
    memory on TPUs and GPUs while parameters stay float32.
    """
    name = config.model.name
    if name not in MODELS:
        raise ValueError(f"config.model.name is {name!r}; choose one of {sorted(MODELS)}")
    dtype_name = config.model.get("dtype", "float32")
    if dtype_name not in COMPUTE_DTYPES:
        raise ValueError(f"config.model.dtype is {dtype_name!r}; choose one of {sorted(COMPUTE_DTYPES)}")
    return MODELS[name](ngf=config.model.ngf, channels=config.data.channels, dtype=COMPUTE_DTYPES[dtype_name])


@dataclasses.dataclass(frozen=True)
class _ApplyWithParams:
    # Equal (and equally hashed) for equal modules, unlike the bound method `model.apply`, whose
    # equality is the module's identity: so a rebuilt but identical model reuses compilations.
    model: nn.Module

    def __call__(self, params: Any, x: jax.Array, sigma: jax.Array) -> jax.Array:
        return self.model.apply({"params": params}, x, sigma)


def get_score_fn(model: nn.Module, params: Any) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """s_θ(x, σ) for x (B, H, W, C) in [0, 1] and σ (B,), from a network and its params.

    A `jax.tree_util.Partial`: passed to a jitted function (such as the samplers) the parameters are
    traced arguments rather than compiled-in constants, so new parameters reuse the compilation.
    """
    return jax.tree_util.Partial(_ApplyWithParams(model), params)


__all__ = ["MODELS", "NCSNv2", "NCSNv2Deeper", "NCSNv2Deepest", "RefineNetScore", "get_model", "get_score_fn"]
