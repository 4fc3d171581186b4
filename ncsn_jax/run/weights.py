"""The weights to sample with: θ' and the σ ladder of one of our checkpoints, or of an official one.

Restoring for sampling reads only the arrays sampling needs (the step, the EMA parameters and the
ladder) from a training checkpoint, by a partial restore onto an abstract template: no Adam moments, no
training parameters, no initialisation is computed, so a sweep over many checkpoints holds one copy of
the parameters at a time.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from ncsn_jax import train_state
from ncsn_jax.errors import CheckpointMismatchError, CheckpointNotFoundError, UnreadableCheckpointError
from ncsn_jax.official import convert
from ncsn_jax.run import checkpoints, files
from ncsn_jax.train_state import SamplingState

def checkpoint_steps(workdir: str) -> list[int]:
    """The steps of the training checkpoints in `<workdir>/checkpoints`, ascending."""
    with checkpoints.Checkpointer(files.checkpoints_dir(workdir)) as checkpointer:
        return checkpointer.all_steps()


def load_sampling_state(
    config: ml_collections.ConfigDict,
    workdir: str,
    mesh: Mesh,
    step: int | None = None,
    official_checkpoint: str | None = None,
) -> SamplingState:
    """θ' and the ladder to sample with, replicated over `mesh`.

    Args:
      config: the config the model was trained with.
      workdir: the training workdir (its `checkpoints/` folder).
      mesh: the device mesh.
      step: a checkpoint step; default the latest. A step that training no longer keeps is also looked
        for in `checkpoints_best/`, where --mode eval keeps the best checkpoint.
      official_checkpoint: path of an official `checkpoint_<step>.pth` to use instead (EMA weights, and
        its σ table when it has one); its step is reported as 0.

    Raises:
      CheckpointNotFoundError: no checkpoint at that place or step.
    """
    template = train_state.abstract_sampling_state(config, mesh)
    if official_checkpoint:
        return _load_official(official_checkpoint, template, train_state.noise_levels(config))

    directory = files.checkpoints_dir(workdir)
    with checkpoints.Checkpointer(directory) as checkpointer:
        available = checkpointer.all_steps()
        if step is None:
            restored = checkpointer.restore_latest(template)
        elif step in available:
            restored = checkpointer.restore(step, template)
        else:
            restored = _restore_best(workdir, step, template)
    if restored is None:
        wanted = "no checkpoint" if step is None else f"no checkpoint of step {step} (have {available})"
        raise CheckpointNotFoundError(
            f"{wanted} in {directory}: train first with --mode train, choose an existing step, or "
            "pass --official_checkpoint=PATH"
        )
    return restored


def _restore_best(workdir: str, step: int, template: SamplingState) -> SamplingState | None:
    """Step `step` from `<workdir>/checkpoints_best` (where --mode eval keeps the best), if it is there."""
    directory = files.best_checkpoints_dir(workdir)
    if not directory.is_dir():
        return None
    with checkpoints.Checkpointer(directory, keep_best_by="fd") as best:
        return best.restore(step, template) if step in best.all_steps() else None


def _load_official(path: str, template: SamplingState, config_sigmas: jax.Array) -> SamplingState:
    """An official checkpoint's EMA weights, with its σ table when it has one, else the config's."""
    sharding = template.sigmas.sharding
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"no official checkpoint at {path} (--official_checkpoint)")
    try:
        params, sigmas = convert.load_official_checkpoint(path, template=template.ema_params)
    except CheckpointMismatchError:
        raise
    except ValueError as error:  # what the .pth reader says of a damaged or foreign file
        raise UnreadableCheckpointError(f"{path} (--official_checkpoint) cannot be read: {error}") from error
    if sigmas is None:
        sigmas = config_sigmas
    elif sigmas.shape != config_sigmas.shape or not np.allclose(sigmas, config_sigmas, rtol=1e-5):
        logging.warning("the checkpoint's noise ladder differs from the config's: sampling with the checkpoint's")
    return SamplingState(
        step=jax.device_put(jnp.zeros((), jnp.int32), sharding),
        ema_params=jax.device_put(params, sharding),
        sigmas=jax.device_put(jnp.asarray(sigmas), sharding),
        model=template.model,
    )
