"""Sampling, inpainting and interpolation from a trained model: batches sharded over every device.

`load_for_sampling` restores the EMA parameters (technique 5: what the paper samples with) of one of our
checkpoints, or of an official PyTorch checkpoint through the converter; `draw_samples`,
`inpaint` and `interpolate` run the annealed Langevin samplers of `ncsn_jax.sampling` in global batches
of `config.sampling.batch_size` split over the ('data',) mesh.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from ncsn_jax import checkpoints, convert, images, parallel, sampling, train


class CheckpointNotFoundError(FileNotFoundError):
    """There is nothing to sample from; the message says what to do."""


def load_for_sampling(
    config: ml_collections.ConfigDict,
    workdir: str,
    mesh: Mesh,
    step: int | None = None,
    official_checkpoint: str | None = None,
) -> train.TrainState:
    """A replicated train state holding the weights to sample with in `ema_params`.

    Args:
      config: the config the model was trained with.
      workdir: the training workdir (its `checkpoints/` folder).
      mesh: the device mesh.
      step: a checkpoint step; default the latest. A step that training no longer keeps is also looked
        for in `checkpoints_best/`, where --mode eval keeps the best checkpoint.
      official_checkpoint: path of an official `checkpoint_<step>.pth` to use instead (EMA weights, and
        its σ table when it has one).

    Raises:
      CheckpointNotFoundError: no checkpoint at that place or step.
    """
    state = parallel.replicate(train.create_train_state(config, jax.random.key(0)), mesh)
    if official_checkpoint:
        params, sigmas = convert.load_official_checkpoint(official_checkpoint, template=state.params)
        state = state.replace(ema_params=parallel.replicate(params, mesh))
        if sigmas is not None:
            if sigmas.shape != state.sigmas.shape or not np.allclose(sigmas, state.sigmas, rtol=1e-5):
                logging.warning("the checkpoint's noise ladder differs from the config's: sampling with the checkpoint's")
            state = state.replace(sigmas=parallel.replicate(jnp.asarray(sigmas), mesh))
        return state

    directory = os.path.join(workdir, "checkpoints")
    with checkpoints.Checkpointer(directory) as checkpointer:
        available = checkpointer.all_steps()
        if step is None:
            restored = checkpointer.restore_latest(state)
        elif step in available:
            restored = checkpointer.restore(step, state)
        else:
            restored = _restore_best(workdir, step, state)
    if restored is None:
        wanted = "no checkpoint" if step is None else f"no checkpoint of step {step} (have {available})"
        raise CheckpointNotFoundError(
            f"{wanted} in {directory}: train first with --mode train, choose an existing step, or "
            "pass --official_checkpoint=PATH"
        )
    return restored


def _restore_best(workdir: str, step: int, template: train.TrainState) -> train.TrainState | None:
    """Step `step` from `<workdir>/checkpoints_best` (where --mode eval keeps the best), if it is there."""
    directory = os.path.join(workdir, "checkpoints_best")
    if not os.path.isdir(directory):
        return None
    with checkpoints.Checkpointer(directory, keep_best_by="fd") as best:
        return best.restore(step, template) if step in best.all_steps() else None


def _round_up(n: int, multiple: int) -> int:
    return math.ceil(n / multiple) * multiple


@functools.partial(jax.jit, static_argnums=(1, 2))
def _sharded_uniform(rng: jax.Array, shape: tuple[int, ...], sharding: jax.sharding.Sharding) -> jax.Array:
    """U[0, 1) initial states created directly with the batch sharding (no host round trip)."""
    return jax.lax.with_sharding_constraint(sampling.uniform_init(rng, shape), sharding)


def _gather(x: jax.Array, count: int) -> np.ndarray:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))[:count]


def sample_batches(
    state: train.TrainState,
    config: ml_collections.ConfigDict,
    rng: jax.Array,
    num_samples: int,
    mesh: Mesh,
    first_batch: int = 0,
) -> Iterator[tuple[int, np.ndarray]]:
    """Batches of `draw_samples`, as (batch index, images), from batch `first_batch` on.

    Batch i is drawn with `fold_in(rng, i)` alone, so an interrupted run resumes at any batch and gets
    the images an uninterrupted run would have.
    """
    batch = config.sampling.batch_size
    parallel.per_host_batch_size(batch, mesh, "sampling.batch_size")  # must divide over the devices
    shape = (batch, config.data.image_size, config.data.image_size, config.data.channels)
    # Every batch is full, the last one trimmed afterwards: one shape, so the sampler compiles once.
    for index in range(first_batch, math.ceil(num_samples / batch)):
        batch_rng = jax.random.fold_in(rng, index)
        x_init = _sharded_uniform(jax.random.fold_in(batch_rng, 0), shape, parallel.batch_sharding(mesh))
        out = sampling.annealed_langevin_dynamics(
            state.score_fn(), jax.random.fold_in(batch_rng, 1), x_init, state.sigmas,
            n_steps_each=config.sampling.n_steps_each, step_lr=config.sampling.step_lr,
            denoise=config.sampling.denoise,
        )
        yield index, _gather(out.samples, min(batch, num_samples - index * batch))


def draw_samples(
    state: train.TrainState,
    config: ml_collections.ConfigDict,
    rng: jax.Array,
    num_samples: int,
    mesh: Mesh,
    progress_bar: bool = True,
) -> np.ndarray:
    """`num_samples` images by annealed Langevin dynamics with the EMA parameters.

    Uses `config.sampling` (n_steps_each = T, step_lr = ε, denoise, batch_size) and the state's σ ladder.

    Returns:
      (num_samples, H, W, C) float32, unclamped (clamp only for display).
    """
    batches = sample_batches(state, config, rng, num_samples, mesh)
    total = math.ceil(num_samples / config.sampling.batch_size)
    return np.concatenate([images for _, images in tqdm.tqdm(
        batches, total=total, desc="sample", unit="batch", disable=not progress_bar)])


def half_mask(image_size: int, channels: int) -> np.ndarray:
    """(H, W, C) mask of the official inpainting task: the left half is known (1), the right half missing."""
    mask = np.zeros((image_size, image_size, channels), np.float32)
    mask[:, : image_size // 2] = 1.0
    return mask


def inpaint(
    state: train.TrainState,
    config: ml_collections.ConfigDict,
    rng: jax.Array,
    references: np.ndarray,
    mask: np.ndarray,
    completions_per_image: int,
    mesh: Mesh,
) -> np.ndarray:
    """Completes each reference image `completions_per_image` times (the unknown pixels sampled).

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
    sharding = parallel.batch_sharding(mesh)
    reference = jax.device_put(repeated, sharding)
    x_init = _sharded_uniform(jax.random.fold_in(rng, 0), repeated.shape, sharding)
    out = sampling.annealed_langevin_inpainting(
        state.score_fn(), jax.random.fold_in(rng, 1), x_init, reference, jnp.asarray(mask), state.sigmas,
        n_steps_each=config.sampling.n_steps_each, step_lr=config.sampling.step_lr,
    )
    return _gather(out.samples, count)


def interpolate(
    state: train.TrainState,
    config: ml_collections.ConfigDict,
    rng: jax.Array,
    starts: np.ndarray,
    n_interpolations: int,
    mesh: Mesh,
) -> np.ndarray:
    """Rows of samples whose noise varies smoothly from column to column (official interpolation).

    Each row starts from one image of `starts` noised at σ1 (as the official sampler's data_init) and all
    its columns share that start; see `sampling.annealed_langevin_interpolation`.

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
    x_start = jnp.asarray(starts, jnp.float32) + state.sigmas[0] * noise
    x_init = jax.device_put(sampling.repeat_for_interpolation(x_start, n_interpolations),
                            parallel.batch_sharding(mesh))
    out = sampling.annealed_langevin_interpolation(
        state.score_fn(), jax.random.fold_in(rng, 1), x_init, state.sigmas,
        n_steps_each=config.sampling.n_steps_each, step_lr=config.sampling.step_lr,
        n_interpolations=n_interpolations,
    )
    return _gather(out.samples, rows * n_interpolations)


def _test_images(config: ml_collections.ConfigDict, count: int) -> np.ndarray:
    """The first `count` test images (the same on every host)."""
    from ncsn_jax import datasets  # pylint: disable=import-outside-toplevel

    batches = datasets.get_dataset(config, "test", batch_size=count, repeat=False, process_index=0, process_count=1)
    first = next(iter(batches), None)
    if first is None:
        raise ValueError(f"the test split has fewer than {count} images: lower --config.sampling.num_references")
    return first


def run_mode(
    config: ml_collections.ConfigDict,
    workdir: str,
    mode: str,
    step: int | None = None,
    official_checkpoint: str | None = None,
) -> str:
    """`--mode sample | inpaint | interpolate`: writes a PNG grid and an .npz under `<workdir>/<mode>/`.

    Returns:
      The path of the PNG grid.
    """
    mesh = parallel.data_mesh()
    state = load_for_sampling(config, workdir, mesh, step, official_checkpoint)
    label = f"step_{int(state.step)}" if not official_checkpoint else "official"
    rng = jax.random.fold_in(jax.random.key(config.seed), 1 + ("sample", "inpaint", "interpolate").index(mode))
    sampling_config = config.sampling
    if mode == "sample":
        images_out = draw_samples(state, config, rng, sampling_config.num_samples, mesh)
        nrow = None
    elif mode == "inpaint":
        references = _test_images(config, sampling_config.num_references)
        mask = half_mask(config.data.image_size, config.data.channels)
        completions = inpaint(state, config, rng, references, mask, sampling_config.completions_per_image, mesh)
        completions = completions.reshape(len(references), -1, *references.shape[1:])
        # Each row: the masked reference, then its completions.
        images_out = np.concatenate([(references * mask)[:, None], completions], axis=1).reshape(
            -1, *references.shape[1:]
        )
        nrow = sampling_config.completions_per_image + 1
    elif mode == "interpolate":
        starts = _test_images(config, sampling_config.num_references)
        images_out = interpolate(state, config, rng, starts, sampling_config.n_interpolations, mesh)
        nrow = sampling_config.n_interpolations
    else:
        raise ValueError(f"unknown sampling mode {mode!r}")

    out_dir = os.path.join(workdir, mode)
    png = os.path.join(out_dir, f"{mode}_{label}.png")
    if jax.process_index() == 0:
        images.save_grid(images_out, png, nrow)
        np.savez_compressed(os.path.join(out_dir, f"{mode}_{label}.npz"), images=images_out)
        logging.info("wrote %s", png)
    return png
