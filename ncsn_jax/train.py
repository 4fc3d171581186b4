"""Train state, the pure jit-compiled training and evaluation steps, and the training loop.

The steps are pure functions of arrays and keys; `train_and_evaluate` is the one function that does I/O
(data, checkpoints, logs, sample grids). The state carries the parameters, the Adam state, the EMA of the parameters (technique 5) and the noise
ladder σ1 > … > σL (as the official model carries it as a buffer), so a checkpoint is self-describing and
`train_step(state, batch, rng)` needs nothing else.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from absl import logging
from flax import struct

from ncsn_jax import images, losses, schedule
from ncsn_jax.models import get_model, get_score_fn


class TrainState(struct.PyTreeNode):
    """Everything a training step reads and writes; a pytree, so it can be jitted, sharded and saved.

    Attributes:
      step: number of optimiser steps taken.
      params: θ, the network parameters.
      opt_state: the Adam state.
      ema_params: θ', updated after every optimiser step as θ' ← m·θ' + (1 − m)·θ (technique 5).
      sigmas: (L,) float32 noise ladder σ1 > … > σL.
      model: the network (static).
      tx: the optimiser (static).
      ema_rate: m, 0.999 in every paper config (static).
    """

    step: jax.Array
    params: Any
    opt_state: optax.OptState
    ema_params: Any
    sigmas: jax.Array
    model: nn.Module = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    ema_rate: float = struct.field(pytree_node=False)

    def score_fn(self, use_ema: bool = True):
        """s(x, σ) with the EMA parameters θ' (what the paper samples and evaluates with) or θ."""
        return get_score_fn(self.model, self.ema_params if use_ema else self.params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam with the config's lr, β1, β2 and eps; weight decay as PyTorch's Adam applies it (L2 on grads)."""
    optim = config.optim
    if optim.lr <= 0:
        raise ValueError(f"config.optim.lr must be positive, got {optim.lr}")
    adam = optax.adam(optim.lr, b1=optim.beta1, b2=optim.beta2, eps=optim.eps)
    if optim.weight_decay:
        # torch.optim.Adam adds wd·θ to the gradient before the moments (not AdamW's decoupled decay).
        return optax.chain(optax.add_decayed_weights(optim.weight_decay), adam)
    return adam


def noise_levels(config: ml_collections.ConfigDict) -> jax.Array:
    """The config's ladder σ1 = sigma_begin > … > σL = sigma_end, L = num_scales."""
    model = config.model
    return jnp.asarray(schedule.geometric_sigmas(model.sigma_begin, model.sigma_end, model.num_scales))


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
    """Initialises the network named by the config, its Adam state, θ' = θ and the ladder."""
    model: nn.Module = get_model(config)
    size, channels = config.data.image_size, config.data.channels
    params = model.init(rng, jnp.zeros((1, size, size, channels)), jnp.ones((1,)))["params"]
    tx = make_optimizer(config)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
        sigmas=noise_levels(config),
        model=model,
        tx=tx,
        ema_rate=config.model.ema_rate,
    )


def _loss(params, state: TrainState, batch: jax.Array, rng: jax.Array) -> jax.Array:
    return losses.dsm_loss(get_score_fn(state.model, params), batch, state.sigmas, rng)


@jax.jit
def eval_step(state: TrainState, batch: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
    """The DSM loss of the EMA parameters on a batch (the official test loss).

    Args:
      state: the train state.
      batch: (B, H, W, C) images in [0, 1].
      rng: PRNG key for the levels and the noise.
    """
    return {"loss": _loss(state.ema_params, state, batch, rng)}


@functools.partial(jax.jit, donate_argnums=0)
def train_step(state: TrainState, batch: jax.Array, rng: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """One Adam step on the DSM loss, then the EMA update. Donates `state`.

    Args:
      state: the train state (its buffers are reused for the result: do not use it afterwards).
      batch: (B, H, W, C) images in [0, 1]. Sharded over a device mesh's batch axis, with the state
        replicated, the step runs data-parallel: the compiler inserts the gradient all-reduce.
      rng: PRNG key for this step's levels and noise (e.g. `jax.random.fold_in(key, step)`).

    Returns:
      (new state, metrics {'loss', 'grad_norm'}); the loss is that of the parameters before the step.
    """
    loss, grads = jax.value_and_grad(_loss)(state.params, state, batch, rng)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    m = state.ema_rate
    ema_params = jax.tree.map(lambda e, p: m * e + (1.0 - m) * p, state.ema_params, params)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """The training loop: the one function here that does I/O.

    Resumes from the latest checkpoint in `<workdir>/checkpoints` when there is one: the state (step,
    parameters, Adam, EMA), the per-step keys (`fold_in(key, step)`) and the data position (a function of
    the step) all continue exactly, so an interrupted run ends where an uninterrupted one would.
    Logs the training loss every `log_freq` steps and the EMA test loss every `eval_freq` steps; saves a
    checkpoint and a sample grid every `snapshot_freq` steps, at the end, and when the machine is being
    preempted.

    Returns:
      The final train state.

    Raises:
      NonFiniteLossError: the loss became NaN/inf (the last checkpoint saved before it is kept).
    """
    # Imported here so that the pure step functions above import without the I/O stack.
    from ncsn_jax import checkpoints, datasets, generate, metric_logging, parallel  # pylint: disable=import-outside-toplevel

    training = config.training
    mesh = parallel.data_mesh()
    host_batch_size = parallel.per_host_batch_size(training.batch_size, mesh)
    parallel.per_host_batch_size(config.sampling.batch_size, mesh, "sampling.batch_size")  # fail now, not at the first snapshot
    key = jax.random.key(config.seed)
    init_key, step_key, eval_key, sample_key = jax.random.split(key, 4)

    state = parallel.replicate(create_train_state(config, init_key), mesh)
    checkpointer = checkpoints.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=training.keep_checkpoints,
        keep_every=training.keep_every,
    )
    restored = checkpointer.restore_latest(state)
    if restored is not None:
        state = restored
        logging.info("resuming from step %d", int(state.step))
    start_step = int(state.step)

    writer = metric_logging.MetricWriter(workdir)
    train_batches = parallel.prefetch_to_mesh(
        datasets.get_dataset(config, "train", host_batch_size, start_step=start_step), mesh
    )
    test_batches = parallel.prefetch_to_mesh(
        datasets.get_dataset(config, "test", host_batch_size, start_step=start_step // training.eval_freq),
        mesh,
    )

    window_losses: list[tuple[int, jax.Array]] = []
    window_start = time.perf_counter()
    progress = tqdm.tqdm(
        total=training.n_iters, initial=start_step, desc="train", unit="step",
        disable=jax.process_index() != 0, dynamic_ncols=True,
    )
    try:
        for step in range(start_step, training.n_iters):
            state, metrics = train_step(state, next(train_batches), jax.random.fold_in(step_key, step))
            window_losses.append((step + 1, metrics["loss"]))
            done = step + 1
            progress.update(1)

            if done % training.log_freq == 0 or done == training.n_iters:
                _raise_if_not_finite(window_losses)
                elapsed = time.perf_counter() - window_start
                steps_per_s = len(window_losses) / elapsed
                writer.write(done, {
                    "train/loss": float(window_losses[-1][1]),
                    "train/steps_per_s": steps_per_s,
                    "train/images_per_s": steps_per_s * training.batch_size,
                })
                progress.set_postfix(loss=f"{float(window_losses[-1][1]):.4g}")
                window_losses, window_start = [], time.perf_counter()

            if done % training.eval_freq == 0:
                eval_metrics = eval_step(state, next(test_batches), jax.random.fold_in(eval_key, done))
                writer.write(done, {"test/loss_ema": float(eval_metrics["loss"])})

            preempted = checkpointer.reached_preemption(done)
            if done % training.snapshot_freq == 0 or done == training.n_iters or preempted:
                _raise_if_not_finite(window_losses)  # never save a state that has gone non-finite
                checkpointer.save(done, state, force=True)
                logging.info("saved checkpoint at step %d", done)
                if training.snapshot_samples and not preempted:
                    samples = generate.draw_samples(
                        state, config, jax.random.fold_in(sample_key, done), training.snapshot_samples, mesh,
                        progress_bar=False,
                    )
                    if jax.process_index() == 0:
                        images.save_grid(samples, os.path.join(workdir, "samples", f"samples_{done:07d}.png"))
            if preempted:
                logging.warning("preemption signalled: saved step %d and stopping", done)
                break
    finally:
        progress.close()
        # Also on errors, so that a save in flight is completed rather than lost.
        checkpointer.wait_until_finished()
        checkpointer.close()
        writer.close()
    return state


def _raise_if_not_finite(losses_by_step: list[tuple[int, jax.Array]]) -> None:
    for step, loss in losses_by_step:
        if not np.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"the training loss is {float(loss)} at step {step}; the checkpoints saved before it are "
                "kept. Lower --config.optim.lr or check the data (pixel values must lie in [0, 1])."
            )
