"""Checks of a config's values before any work starts, with messages that name the field to change."""
from __future__ import annotations

import ml_collections

from ncsn_jax.models import MODELS

# Halvings of the resolution in each network: the image size must divide by 2 to this power.
_HALVINGS = {"ncsnv2": 1, "ncsnv2_deeper": 2, "ncsnv2_deepest": 3}


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first config field whose value cannot work."""
    positive_ints = {
        "data.image_size": config.data.image_size,
        "data.channels": config.data.channels,
        "model.ngf": config.model.ngf,
        "training.batch_size": config.training.batch_size,
        "training.n_iters": config.training.n_iters,
        "training.log_freq": config.training.log_freq,
        "training.eval_freq": config.training.eval_freq,
        "training.snapshot_freq": config.training.snapshot_freq,
        "training.keep_checkpoints": config.training.keep_checkpoints,
        "sampling.batch_size": config.sampling.batch_size,
        "sampling.n_steps_each": config.sampling.n_steps_each,
        "model.num_scales": config.model.num_scales,
        "eval.batch_size": config.eval.batch_size,
        "eval.num_samples": config.eval.num_samples,
        "eval.kid_subsets": config.eval.kid_subsets,
        "eval.kid_subset_size": config.eval.kid_subset_size,
        "eval.kid_reference_size": config.eval.kid_reference_size,
    }
    for field, value in positive_ints.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"config.{field} must be a positive integer, got {value!r}")
    if config.model.name not in MODELS:
        raise ValueError(f"config.model.name is {config.model.name!r}; choose one of {sorted(MODELS)}")
    multiple = 2 ** _HALVINGS[config.model.name]
    if config.data.image_size % multiple:
        raise ValueError(
            f"config.data.image_size {config.data.image_size} must be divisible by {multiple} for "
            f"{config.model.name} (it halves the resolution {_HALVINGS[config.model.name]} time(s))"
        )
    if not 0 < config.model.sigma_end < config.model.sigma_begin:
        raise ValueError(
            f"need 0 < config.model.sigma_end < config.model.sigma_begin, got sigma_end="
            f"{config.model.sigma_end} and sigma_begin={config.model.sigma_begin}"
        )
    if not 0 < config.sampling.step_lr < 2 * config.model.sigma_end**2:
        raise ValueError(
            f"config.sampling.step_lr {config.sampling.step_lr} must lie in (0, 2·sigma_end²) = "
            f"(0, {2 * config.model.sigma_end**2:g}) for Langevin dynamics to be stable"
        )
    if not 0 <= config.model.ema_rate < 1:
        raise ValueError(f"config.model.ema_rate must lie in [0, 1), got {config.model.ema_rate}")
    if config.optim.lr <= 0:
        raise ValueError(f"config.optim.lr must be positive, got {config.optim.lr}")
    if config.eval.stats_split not in ("train", "test"):
        raise ValueError(f"config.eval.stats_split must be 'train' or 'test', got {config.eval.stats_split!r}")
    if not isinstance(config.training.snapshot_samples, int) or config.training.snapshot_samples < 0:
        raise ValueError(f"config.training.snapshot_samples must be 0 (no grids) or a positive integer, "
                         f"got {config.training.snapshot_samples!r}")
    if not isinstance(config.eval.final_num_samples, int) or config.eval.final_num_samples < 0:
        raise ValueError(f"config.eval.final_num_samples must be 0 (skip) or a positive integer, "
                         f"got {config.eval.final_num_samples!r}")
