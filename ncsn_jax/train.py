"""The pure jit-compiled training and evaluation steps.

The steps are pure functions of the train state (`ncsn_jax.train_state`: parameters, Adam, the EMA of
the parameters and the ladder), a batch and a key; the training loop that runs them, and does the I/O
(data, checkpoints, logs, sample grids), is `ncsn_jax.modes.train`.
"""
from __future__ import annotations

import functools

import jax
import optax

from ncsn_jax import losses
from ncsn_jax.models.score import get_score_fn
from ncsn_jax.train_state import TrainState


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
