"""The samplers run over every device: global batches sharded along the ('data',) mesh axis.

The drivers take a score function, the ladder σ1 > … > σL and the sampling settings (`config.sampling`:
`method`, `batch_size`, `n_steps_each` = T, `step_lr` = ε, `denoise`, …, vetted by `ncsn_jax.config_checks`),
run the jit-compiled program of the method's record in `ncsn_jax.sampling.methods` on batches split over
the mesh and gather the images on every host. They know nothing of checkpoints or train states
(`ncsn_jax.run.weights` gives the score function of a checkpoint).
"""
from __future__ import annotations

import functools
import math
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from ncsn_jax.models.score import ScoreFn
from ncsn_jax.runtime import data_parallel
from ncsn_jax.sampling import langevin, methods

ImageShape = tuple[int, int, int]


def _round_up(n: int, multiple: int) -> int:
    return math.ceil(n / multiple) * multiple


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _sharded_initial_state(method: str, rng: jax.Array, shape: tuple[int, ...], sharding: jax.sharding.Sharding,
                           sigma_begin: jax.Array) -> jax.Array:
    """The method's initial states (`methods.initial_state`), created with the batch sharding."""
    return jax.lax.with_sharding_constraint(
        methods.initial_state(method, rng, shape, sigma_begin), sharding)


def _gather(x: jax.Array, count: int) -> np.ndarray:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))[:count]


def sample_batches(
    score_fn: ScoreFn,
    sigmas: jax.Array,
    settings: ml_collections.ConfigDict,
    image_shape: ImageShape,
    rng: jax.Array,
    num_samples: int,
    mesh: Mesh,
    first_batch: int = 0,
) -> Iterator[tuple[int, np.ndarray]]:
    """Batches of `draw_samples`, as (batch index, images), from batch `first_batch` on.

    Batch i is drawn with `fold_in(rng, i)` alone, so an interrupted run resumes at any batch and gets
    the images an uninterrupted run would have.
    """
    batch = settings.batch_size
    data_parallel.per_host_batch_size(batch, mesh, "sampling.batch_size")  # must divide over the devices
    levels, epsilon = methods.ladder_and_step_lr(sigmas, settings)
    shape = (batch, *image_shape)
    # Every batch is full, the last one trimmed afterwards: one shape, so the sampler compiles once.
    for index in range(first_batch, math.ceil(num_samples / batch)):
        batch_rng = jax.random.fold_in(rng, index)
        x_init = _sharded_initial_state(settings.method, jax.random.fold_in(batch_rng, 0), shape,
                                        data_parallel.batch_sharding(mesh), sigmas[0])
        samples = methods.run(score_fn, jax.random.fold_in(batch_rng, 1), x_init, levels, epsilon, settings)
        yield index, _gather(samples, min(batch, num_samples - index * batch))


def draw_samples(
    score_fn: ScoreFn,
    sigmas: jax.Array,
    settings: ml_collections.ConfigDict,
    image_shape: ImageShape,
    rng: jax.Array,
    num_samples: int,
    mesh: Mesh,
    progress_bar: bool = True,
) -> np.ndarray:
    """`num_samples` images of `image_shape` (H, W, C) by the sampler of `settings.method`.

    Args:
      score_fn: s(x, σ), e.g. `SamplingState.score_fn()` (the EMA parameters).
      sigmas: (L,) the trained ladder σ1 > … > σL.
      settings: `config.sampling` (method, the settings it reads, ladder_stride, denoise, batch_size).

    Returns:
      (num_samples, H, W, C) float32, unclamped (clamp only for display).
    """
    batches = sample_batches(score_fn, sigmas, settings, image_shape, rng, num_samples, mesh)
    total = math.ceil(num_samples / settings.batch_size)
    return np.concatenate([images for _, images in tqdm.tqdm(
        batches, total=total, desc="sample", unit="batch", disable=not progress_bar)])


def half_mask(image_size: int, channels: int) -> np.ndarray:
    """(H, W, C) mask of the official inpainting task: the left half is known (1), the right half missing."""
    mask = np.zeros((image_size, image_size, channels), np.float32)
    mask[:, : image_size // 2] = 1.0
    return mask


def inpaint(
    score_fn: ScoreFn,
    sigmas: jax.Array,
    settings: ml_collections.ConfigDict,
    rng: jax.Array,
    references: np.ndarray,
    mask: np.ndarray,
    completions_per_image: int,
    mesh: Mesh,
) -> np.ndarray:
    """Completes each reference image `completions_per_image` times (the unknown pixels sampled) by the
    inpainting program of `settings.method` (`methods.INPAINTING_METHODS`).

    Args:
      references: (N, H, W, C) images in [0, 1].
      mask: broadcastable to (H, W, C) or (N·k, H, W, C); nonzero where a pixel is known.

    Returns:
      (N·k, H, W, C) float32, reference i's completions at rows i·k … i·k + k − 1; unclamped.
    """
    devices = mesh.devices.size
    repeated = np.repeat(np.asarray(references, np.float32), completions_per_image, axis=0)
    count = repeated.shape[0]
    padded = _round_up(count, devices)
    repeated = np.concatenate([repeated, repeated[: padded - count]]) if padded > count else repeated
    sharding = data_parallel.batch_sharding(mesh)
    reference = jax.device_put(repeated, sharding)
    x_init = _sharded_initial_state(settings.method, jax.random.fold_in(rng, 0), repeated.shape, sharding,
                                    sigmas[0])
    samples = methods.inpaint(score_fn, jax.random.fold_in(rng, 1), x_init, reference,
                              jnp.asarray(mask), sigmas, settings)
    return _gather(samples, count)


def interpolate(
    score_fn: ScoreFn,
    sigmas: jax.Array,
    settings: ml_collections.ConfigDict,
    rng: jax.Array,
    starts: np.ndarray,
    n_interpolations: int,
    mesh: Mesh,
) -> np.ndarray:
    """Rows of samples whose noise varies smoothly from column to column (official interpolation): the
    paper's sampler on the whole ladder, whatever `settings.method` (`config_checks.check_mode` refuses others).

    Each row starts from one image of `starts` noised at σ1 (as the official sampler's data_init) and all
    its columns share that start; see `langevin.annealed_langevin_interpolation`.

    Args:
      starts: (R, H, W, C) images in [0, 1], one per row.

    Returns:
      (R·n, H, W, C) float32, row-major; unclamped.
    """
    devices = mesh.devices.size
    rows = starts.shape[0]
    # Whole rows are padded so that the batch divides over the devices.
    padded_rows = _round_up(rows * n_interpolations, math.lcm(devices, n_interpolations)) // n_interpolations
    starts = np.concatenate([starts, np.repeat(starts[:1], padded_rows - rows, axis=0)])
    noise = jax.random.normal(jax.random.fold_in(rng, 0), starts.shape)
    x_start = jnp.asarray(starts, jnp.float32) + sigmas[0] * noise
    x_init = jax.device_put(langevin.repeat_for_interpolation(x_start, n_interpolations),
                            data_parallel.batch_sharding(mesh))
    out = langevin.annealed_langevin_interpolation(
        score_fn, jax.random.fold_in(rng, 1), x_init, sigmas,
        n_steps_each=settings.n_steps_each, step_lr=settings.step_lr, n_interpolations=n_interpolations,
    )
    return _gather(out.samples, rows * n_interpolations)
