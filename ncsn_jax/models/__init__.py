"""Score networks of the NCSNv2 family, chosen by `config.model.name`: the networks (`ncsnv2`), their
layers (`layers`, `ops`), the score function built from a network (`score`) and their FLOP count (`flops`)."""
from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from ncsn_jax.models.ncsnv2 import NCSNv2, NCSNv2Deeper, NCSNv2Deepest, RefineNetScore

MODELS = {"ncsnv2": NCSNv2, "ncsnv2_deeper": NCSNv2Deeper, "ncsnv2_deepest": NCSNv2Deepest}
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def get_model(config: ml_collections.ConfigDict) -> RefineNetScore:
    """Builds the network named by `config.model.name` with `config.model.ngf` and `config.data.channels`.

    `config.model.dtype` is the compute dtype; 'bfloat16' halves activation
    memory on TPUs and GPUs while parameters stay float32. The names are checked by `config_checks`.
    """
    model = config.model
    return MODELS[model.name](ngf=model.ngf, channels=config.data.channels, dtype=COMPUTE_DTYPES[model.dtype])


__all__ = ["MODELS", "NCSNv2", "NCSNv2Deeper", "NCSNv2Deepest", "RefineNetScore", "get_model"]
