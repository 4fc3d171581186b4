"""The train state: network parameters, Adam, the EMA of the parameters and the σ ladder, in one pytree.

This module is a leaf of the library (it imports only the networks and the schedule): training, the
checkpoints and the sampling modes all build on it. It gives the state three ways:

- `create_train_state`: concrete arrays on the default device (notebooks, tests, the tour);
- `init_train_state`: created by one compiled program directly with its sharding over a device mesh,
  so no copy of the parameters is ever made on one device and then replicated;
- `abstract_train_state`: shapes, dtypes and shardings only (`jax.eval_shape`, no computation, no
  memory): the template that a checkpoint is restored onto.

`SamplingState` is the part that sampling reads (the step, θ' and the ladder); `abstract_sampling_state`
is its template, for restoring just those arrays from a training checkpoint.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ncsn_jax import schedule
from ncsn_jax.models import get_model
from ncsn_jax.models.score import ScoreFn, get_score_fn


class TrainState(struct.PyTreeNode):
    """Everything a training step reads and writes; a pytree, so it can be jitted, sharded and saved.

    Attributes:
      step: number of optimiser steps taken.
      params: θ, the network parameters.
      opt_state: the Adam state.
      ema_params: θ', updated after every optimiser step as θ' ← m·θ' + (1 − m)·θ (technique 5).
      sigmas: (L,) float32 noise ladder σ1 > … > σL (the official model carries it as a buffer too, so a
        checkpoint describes itself).
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

    def score_fn(self, use_ema: bool = True) -> ScoreFn:
        """s(x, σ) with the EMA parameters θ' (what the paper samples and evaluates with) or θ."""
        return get_score_fn(self.model, self.ema_params if use_ema else self.params)


class SamplingState(struct.PyTreeNode):
    """What sampling needs of a trained model: the EMA parameters θ' and the σ ladder.

    Attributes:
      step: the training step of the weights (0 for weights from elsewhere, e.g. an official checkpoint).
      ema_params: θ'.
      sigmas: (L,) float32 σ1 > … > σL.
      model: the network (static).
    """

    step: jax.Array
    ema_params: Any
    sigmas: jax.Array
    model: nn.Module = struct.field(pytree_node=False)

    def score_fn(self) -> ScoreFn:
        """s(x, σ) with θ'."""
        return get_score_fn(self.model, self.ema_params)


# The fields of a TrainState checkpoint that a SamplingState restores.
SAMPLING_FIELDS = ("step", "ema_params", "sigmas")

# config.optim.lr_schedule → the learning rate (a number or an optax schedule) of (lr, n_iters).
LR_SCHEDULES = {
    "constant": lambda lr, n_iters: lr,
    "cosine": optax.cosine_decay_schedule,
}


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam with the config's lr, β1, β2 and eps; weight decay as PyTorch's Adam applies it (L2 on grads).

    `optim.lr_schedule` "constant" is the paper's; "cosine" decays the rate from `lr` to 0 over
    `training.n_iters` steps (for short runs; on the MNIST default's 2,000-step trial it did not beat the
    constant rate). The schedule's step count lives in the Adam state, so a resumed run continues it
    exactly.
    """
    optim = config.optim
    learning_rate = LR_SCHEDULES[optim.lr_schedule](optim.lr, config.training.n_iters)
    adam = optax.adam(learning_rate, b1=optim.beta1, b2=optim.beta2, eps=optim.eps)
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


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of the state: every array whole on every device of `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def init_train_state(config: ml_collections.ConfigDict, rng: jax.Array, mesh: Mesh) -> TrainState:
    """`create_train_state`, computed by one program whose outputs are already replicated over `mesh`."""
    create = jax.jit(functools.partial(create_train_state, config), out_shardings=replicated(mesh))
    return create(rng)


def abstract_train_state(config: ml_collections.ConfigDict, mesh: Mesh) -> TrainState:
    """The state's shapes, dtypes and (replicated) shardings, without computing anything."""
    shapes = jax.eval_shape(functools.partial(create_train_state, config), jax.random.key(0))
    sharding = replicated(mesh)
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), shapes)


def abstract_sampling_state(config: ml_collections.ConfigDict, mesh: Mesh) -> SamplingState:
    """The template of `SamplingState` (shapes, dtypes, replicated shardings), from the config's network."""
    state = abstract_train_state(config, mesh)
    return SamplingState(step=state.step, ema_params=state.ema_params, sigmas=state.sigmas, model=state.model)
