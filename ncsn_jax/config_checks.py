"""The one validator of config values: run before any work starts, messages that name the field to change.

Library functions check only what their own arguments must satisfy; every rule about what a config
field may hold is written here, but for a sampler method's rules about its own settings (pc's corrector,
cas's step size): those stand in its record of `methods.SAMPLERS`, beside the settings they are
about, and `check_sampling` runs them. `check_config` runs every rule that needs only the config;
`check_mode` those of `--mode inpaint` and `interpolate`, which `modes.sample` runs.
"""
from __future__ import annotations

import math

import ml_collections
import numpy as np

from ncsn_jax.data.sources import DATASETS
from ncsn_jax.errors import ConfigError
from ncsn_jax.models import COMPUTE_DTYPES, MODELS
from ncsn_jax.sampling import methods
from ncsn_jax.schedule import geometric_sigmas
from ncsn_jax.train_state import LR_SCHEDULES

FEATURES = ("auto", "inception", "digits")


def halvings(model_name: str) -> int:
    """How many times the network named `model_name` halves the resolution (from its stage table)."""
    return sum(stage.halves_resolution for stage in MODELS[model_name].stages)


def check_sampling(settings: ml_collections.ConfigDict, sigmas: np.ndarray) -> None:
    """Raises ConfigError for sampler settings that cannot run on a trained ladder.

    Args:
      settings: `config.sampling`.
      sigmas: the trained ladder σ1 > … > σL.
    """
    method = methods.get_method(settings.method)  # its error names the methods there are
    stride, num_levels = settings.ladder_stride, len(sigmas)
    if not _is_int(stride) or stride < 1:
        raise ConfigError(f"config.sampling.ladder_stride must be a positive integer, got {stride!r}")
    if stride >= num_levels:
        raise ConfigError(f"config.sampling.ladder_stride {stride} must be at least 1 and less than the ladder's "
                          f"{num_levels} levels")
    if settings.schedule not in methods.SCHEDULES:
        raise ConfigError(f"config.sampling.schedule is {settings.schedule!r}; choose one of "
                          f"{', '.join(methods.SCHEDULES)}")
    if settings.schedule == "rho":
        if not method.any_levels:
            raise ConfigError(f"config.sampling.method {settings.method!r} runs on the trained ladder only "
                              "(config.sampling.schedule 'ladder', with ladder_stride for fewer levels): its step "
                              "size is technique 4's for a geometric ladder")
        if stride != 1:
            raise ConfigError(f"config.sampling.ladder_stride {stride} applies to config.sampling.schedule 'ladder'; "
                              "with 'rho', config.sampling.num_levels sets the levels")
        if not _is_int(settings.num_levels) or settings.num_levels < 2:
            raise ConfigError(f"config.sampling.num_levels must be an integer of at least 2 (σ1 and σL), got "
                              f"{settings.num_levels!r}")
        rho = settings.rho
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0 < rho < math.inf:
            raise ConfigError(f"config.sampling.rho must be a positive number (7 spaces the levels as Karras et al.), "
                              f"got {rho!r}")
    method.check(settings, np.asarray(sigmas))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_mode(settings: ml_collections.ConfigDict, mode: str) -> None:
    """Raises ConfigError when `--mode` inpaint or interpolate cannot run with `settings` (`config.sampling`)."""
    if mode == "inpaint" and not methods.get_method(settings.method).inpaints:
        raise ConfigError(f"--mode inpaint works with config.sampling.method "
                          f"{' or '.join(methods.INPAINTING_METHODS)}, not {settings.method!r}")
    if mode == "interpolate" and not methods.is_papers_sampler(settings):
        # The interpolation is a variant of the paper's sampler (`langevin.annealed_langevin_interpolation`).
        raise ConfigError(f"--mode interpolate works with config.sampling.method {methods.PAPERS_METHOD} "
                          f"on the whole ladder only (method {settings.method!r}, ladder_stride "
                          f"{settings.ladder_stride})")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first config field whose value cannot work."""
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
        "sampling.num_samples": config.sampling.num_samples,
        "sampling.n_interpolations": config.sampling.n_interpolations,
        "sampling.num_references": config.sampling.num_references,
        "sampling.completions_per_image": config.sampling.completions_per_image,
        "training.keep_every": config.training.keep_every,
        "model.num_scales": config.model.num_scales,
        "eval.batch_size": config.eval.batch_size,
        "eval.num_samples": config.eval.num_samples,
        "eval.kid_subsets": config.eval.kid_subsets,
        "eval.kid_subset_size": config.eval.kid_subset_size,
        "eval.kid_reference_size": config.eval.kid_reference_size,
    }
    for field, value in positive_ints.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"config.{field} must be a positive integer, got {value!r}")
    if config.model.num_scales < 2:
        raise ConfigError(f"config.model.num_scales must be at least 2 (σ1 and σL), got {config.model.num_scales}")
    if config.data.dataset not in DATASETS:
        raise ConfigError(f"config.data.dataset is {config.data.dataset!r}; choose one of {', '.join(DATASETS)}")
    if not 0 <= config.data.max_undecodable_fraction < 1:
        raise ConfigError(f"config.data.max_undecodable_fraction must lie in [0, 1), got "
                          f"{config.data.max_undecodable_fraction!r}")
    if config.data.decode_processes is not None and config.data.decode_processes < 0:
        raise ConfigError(f"config.data.decode_processes must be None (one per core), 0 (threads of this process) "
                          f"or a number of processes, got {config.data.decode_processes!r}")
    if config.data.channels not in (1, 3):
        raise ConfigError(f"config.data.channels must be 1 or 3, got {config.data.channels!r}")
    if config.model.name not in MODELS:
        raise ConfigError(f"config.model.name is {config.model.name!r}; choose one of {sorted(MODELS)}")
    if config.model.dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"config.model.dtype is {config.model.dtype!r}; choose one of {sorted(COMPUTE_DTYPES)}")
    times = halvings(config.model.name)
    if config.data.image_size % 2**times:
        raise ConfigError(
            f"config.data.image_size {config.data.image_size} must be divisible by {2**times} for "
            f"{config.model.name} (it halves the resolution {times} time(s))"
        )
    if not 0 < config.model.sigma_end < config.model.sigma_begin < math.inf:
        raise ConfigError(
            f"need 0 < config.model.sigma_end < config.model.sigma_begin, got sigma_end="
            f"{config.model.sigma_end} and sigma_begin={config.model.sigma_begin}"
        )
    if not 0 < config.sampling.step_lr < 2 * config.model.sigma_end**2:
        raise ConfigError(
            f"config.sampling.step_lr {config.sampling.step_lr} must lie in (0, 2·sigma_end²) = "
            f"(0, {2 * config.model.sigma_end**2:g}) for Langevin dynamics to be stable"
        )
    # The sampler's method and settings, on the ladder that training will create.
    check_sampling(config.sampling, geometric_sigmas(
        config.model.sigma_begin, config.model.sigma_end, config.model.num_scales))
    if not 0 <= config.model.ema_rate < 1:
        raise ConfigError(f"config.model.ema_rate must lie in [0, 1), got {config.model.ema_rate}")
    if not 0 < config.optim.lr < math.inf:
        raise ConfigError(f"config.optim.lr must be a positive number, got {config.optim.lr}")
    for field in ("beta1", "beta2"):
        if not 0 <= config.optim[field] < 1:
            raise ConfigError(f"config.optim.{field} must lie in [0, 1), got {config.optim[field]}")
    if not 0 < config.optim.eps < math.inf:
        raise ConfigError(f"config.optim.eps must be a positive number, got {config.optim.eps}")
    if not 0 <= config.optim.weight_decay < math.inf:
        raise ConfigError(f"config.optim.weight_decay must be a number >= 0, got {config.optim.weight_decay}")
    if not 0 < config.tune.overlap_target < 0.9973:
        raise ConfigError(f"config.tune.overlap_target must lie in (0, 0.9973), the chance of three standard "
                          f"deviations, got {config.tune.overlap_target}")
    if not _is_int(config.eval.begin_step) or config.eval.begin_step < 0:
        raise ConfigError(f"config.eval.begin_step must be an integer >= 0, got {config.eval.begin_step!r}")
    end_step = config.eval.end_step
    if end_step is not None and (not _is_int(end_step) or end_step < config.eval.begin_step):
        raise ConfigError(f"config.eval.end_step must be None (the latest) or an integer >= config.eval.begin_step "
                          f"{config.eval.begin_step}, got {end_step!r}")
    if config.optim.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"config.optim.lr_schedule is {config.optim.lr_schedule!r}; choose one of "
                          f"{sorted(LR_SCHEDULES)}")
    if config.eval.features not in FEATURES:
        raise ConfigError(f"config.eval.features is {config.eval.features!r}; choose one of {list(FEATURES)}")
    if config.eval.features == "digits" and (config.data.image_size, config.data.channels) != (28, 1):
        raise ConfigError("config.eval.features 'digits' needs 28×28 grey images (the MNIST config); use "
                          "'inception' for this dataset")
    if config.eval.stats_split not in ("train", "test"):
        raise ConfigError(f"config.eval.stats_split must be 'train' or 'test', got {config.eval.stats_split!r}")
    if not isinstance(config.training.snapshot_samples, int) or config.training.snapshot_samples < 0:
        raise ConfigError(f"config.training.snapshot_samples must be 0 (no grids) or a positive integer, "
                         f"got {config.training.snapshot_samples!r}")
    if not isinstance(config.eval.final_num_samples, int) or config.eval.final_num_samples < 0:
        raise ConfigError(f"config.eval.final_num_samples must be 0 (skip) or a positive integer, "
                         f"got {config.eval.final_num_samples!r}")
