"""`--mode tune`: techniques 1, 2 and 4 computed on a config's training data.

σ1 is the largest distance between two training images (over all of them up to 60,000 images, else over
a random subset of 10,000, as the paper), L follows from σ1, σL and the data dimension (technique 2) and
ε from the resulting ratio γ and T (technique 4).
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import ml_collections
import numpy as np

from ncsn_jax import schedule
from ncsn_jax.data import pipeline
from ncsn_jax.data.reservoir import Reservoir
from ncsn_jax.errors import DataError
from ncsn_jax.modes import Options

# Technique 1 uses every image of training sets up to this size, and a random subset above it.
ALL_IMAGES_UP_TO = 60_000
SUBSET_SIZE = 10_000


@dataclasses.dataclass(frozen=True)
class TunedSchedule:
    """What techniques 1, 2 and 4 give for a dataset (paper symbols in brackets)."""

    sigma_begin: float  # σ1
    num_scales: int  # L
    gamma: float  # γ = (σ1/σL)^(1/(L−1))
    step_lr: float  # ε
    num_images: int  # images seen in the training split
    num_used: int  # images the maximum distance was taken over


def select_images(batches: Iterable[np.ndarray], seed: int) -> tuple[np.ndarray, int]:
    """All images when there are at most 60,000, else a uniform random subset of 10,000.

    One pass over the data with a reservoir sample, so the dataset's size need not be known and at most
    60,000 images are held.

    Returns:
      (images, number of images seen).
    """
    reservoir = Reservoir(SUBSET_SIZE, np.random.default_rng(seed))
    everything: list[np.ndarray] | None = []
    for batch in batches:
        batch = np.asarray(batch, np.float32)
        reservoir.update(batch)
        if everything is not None:
            everything.extend(batch)
            if len(everything) > ALL_IMAGES_UP_TO:
                everything = None
    seen = reservoir.seen
    if seen < 2:
        raise DataError(f"the training split has {seen} image(s); technique 1 needs at least 2")
    return (np.stack(everything) if everything is not None else reservoir.sample()), seen


def tune_schedule(images: np.ndarray, num_seen: int, config: ml_collections.ConfigDict) -> TunedSchedule:
    """Techniques 1, 2, 4 for `images` with the config's σL, T and overlap target."""
    sigma_end = config.model.sigma_end
    dim = int(np.prod(images.shape[1:]))
    sigma_begin = schedule.max_pairwise_distance(images, max_points=images.shape[0], seed=config.seed)
    num_scales = schedule.num_noise_scales(dim, sigma_begin, sigma_end, config.tune.overlap_target)
    gamma = (sigma_begin / sigma_end) ** (1.0 / (num_scales - 1))
    step_lr = schedule.langevin_step_size(gamma, sigma_end, config.sampling.n_steps_each)
    return TunedSchedule(sigma_begin, num_scales, gamma, step_lr, num_seen, images.shape[0])


def tune(config: ml_collections.ConfigDict) -> TunedSchedule:
    """Reads the config's training split once (this host reads all of it) and tunes the schedule."""
    data_config = config.copy_and_resolve_references()
    data_config.data.random_flip = False
    batches = pipeline.get_dataset(data_config, "train", batch_size=1, repeat=False,
                                   process_index=0, process_count=1)
    images, seen = select_images(batches, config.seed)
    return tune_schedule(images, seen, config)


def report(tuned: TunedSchedule, config: ml_collections.ConfigDict) -> str:
    """The tuned values beside the config's, and the config lines to paste."""
    model, sampling = config.model, config.sampling
    rows = [
        ("sigma_begin (σ1)", f"{tuned.sigma_begin:.4g}", f"{model.sigma_begin:g}"),
        ("num_scales (L)", str(tuned.num_scales), str(model.num_scales)),
        ("step_lr (ε)", f"{tuned.step_lr:.3g}", f"{sampling.step_lr:g}"),
    ]
    lines = [
        f"technique 1 over {tuned.num_used} of {tuned.num_images} training images; technique 2 with "
        f"overlap target {config.tune.overlap_target}; technique 4 with T = {sampling.n_steps_each}, "
        f"γ = {tuned.gamma:.6f}",
        f"{'':20s}{'tuned':>12s}{'config':>12s}",
        *(f"{name:20s}{tuned_value:>12s}{config_value:>12s}" for name, tuned_value, config_value in rows),
        "",
        "config lines to paste:",
        f"    config.model.sigma_begin = {tuned.sigma_begin:.4g}",
        f"    config.model.num_scales = {tuned.num_scales}",
        f"    config.sampling.step_lr = {tuned.step_lr:.3g}",
    ]
    return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str | None, options: Options) -> TunedSchedule:
    """`--mode tune`: prints the tuned values beside the config's (`report`) and returns them; reads no
    workdir and no option."""
    tuned = tune(config)
    print(report(tuned, config))
    return tuned
