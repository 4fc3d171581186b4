"""`--mode sample | inpaint | interpolate`: images from a trained model, written as a PNG grid and an .npz.

Each mode loads the weights to sample with (`ncsn_jax.run.weights`: θ' of a checkpoint, or an official
PyTorch one), runs its driver of `ncsn_jax.sampling.sharded` over every device and writes
`<workdir>/<mode>/<mode>_step_<N>.png` and `.npz` (`_official` for an official checkpoint; a sampler
other than the paper's adds its name, e.g. `sample_step_<N>_ode_stride2.png`).
"""
from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from absl import logging

from ncsn_jax import config_checks
from ncsn_jax.data import pipeline
from ncsn_jax.errors import DataError
from ncsn_jax.modes import Options
from ncsn_jax.run import files, images, weights
from ncsn_jax.runtime import data_parallel
from ncsn_jax.sampling import methods, sharded

MODES = ("sample", "inpaint", "interpolate")


def _test_images(config: ml_collections.ConfigDict, count: int) -> np.ndarray:
    """The first `count` test images (the same on every host)."""
    batches = pipeline.get_dataset(config, "test", batch_size=count, repeat=False, process_index=0, process_count=1)
    first = next(iter(batches), None)
    if first is None:
        raise DataError(f"the test split has fewer than {count} images: lower --config.sampling.num_references")
    return first


def run(config: ml_collections.ConfigDict, workdir: str, options: Options) -> str:
    """Runs `options.mode` (one of `MODES`) and writes its grid and arrays under `<workdir>/<mode>/`.

    Reads the weights of checkpoint `options.checkpoint_step` (None: the latest), or of
    `options.official_checkpoint` when given.

    Returns:
      The path of the PNG grid.
    """
    mode, official_checkpoint = options.mode, options.official_checkpoint
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    config_checks.check_mode(config.sampling, mode)  # before the weights are loaded
    mesh = data_parallel.data_mesh()
    state = weights.load_sampling_state(config, workdir, mesh, options.checkpoint_step, official_checkpoint)
    score_fn, sigmas, settings = state.score_fn(), state.sigmas, config.sampling
    label = f"step_{int(state.step)}" if not official_checkpoint else "official"
    label += methods.file_name_suffix(settings)  # other samplers' runs keep their own files
    rng = jax.random.fold_in(jax.random.key(config.seed), 1 + MODES.index(mode))
    image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
    if mode == "sample":
        images_out = sharded.draw_samples(
            score_fn, sigmas, settings, image_shape, rng, settings.num_samples, mesh)
        nrow = None
    elif mode == "inpaint":
        references = _test_images(config, settings.num_references)
        mask = sharded.half_mask(config.data.image_size, config.data.channels)
        completions = sharded.inpaint(
            score_fn, sigmas, settings, rng, references, mask, settings.completions_per_image, mesh)
        completions = completions.reshape(len(references), -1, *references.shape[1:])
        # Each row: the masked reference, then its completions.
        images_out = np.concatenate([(references * mask)[:, None], completions], axis=1).reshape(
            -1, *references.shape[1:]
        )
        nrow = settings.completions_per_image + 1
    else:
        starts = _test_images(config, settings.num_references)
        images_out = sharded.interpolate(
            score_fn, sigmas, settings, rng, starts, settings.n_interpolations, mesh)
        nrow = settings.n_interpolations

    png = files.mode_output(workdir, mode, label, ".png")
    if jax.process_index() == 0:
        images.save_grid(images_out, png, nrow)
        files.save_npz(files.mode_output(workdir, mode, label, ".npz"), compressed=True, images=images_out)
        logging.info("wrote %s", png)
    return os.fspath(png)
