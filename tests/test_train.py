"""Train state, Adam and EMA wiring, and the data-parallel step, on the tiny config."""
import copy

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from configs import tiny
from ncsn_jax import losses, schedule, train, train_state
from ncsn_jax.models.score import get_score_fn


def setup(**overrides):
    config = tiny.get_config()
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    state = train_state.create_train_state(config, jax.random.key(0))
    batch = jax.random.uniform(jax.random.key(1), (8, 16, 16, 3))
    return config, state, batch


def host_copy(tree):
    return jax.tree.map(np.array, tree)


def test_initial_state():
    config, state, _ = setup()
    assert int(state.step) == 0
    for p, e in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.ema_params)):
        np.testing.assert_array_equal(p, e)
    np.testing.assert_array_equal(state.sigmas, schedule.geometric_sigmas(10.0, 0.01, 10))
    assert state.ema_rate == config.model.ema_rate


def test_first_step_is_adam_and_ema_without_bias_correction():
    config, state, batch = setup(**{"model.ema_rate": 0.9})
    rng = jax.random.key(2)
    params0 = host_copy(state.params)
    loss_fn = lambda p: losses.dsm_loss(get_score_fn(state.model, p), batch, state.sigmas, rng)
    expected_loss, grads = jax.value_and_grad(loss_fn)(state.params)

    new_state, metrics = train.train_step(state, batch, rng)

    np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-5)
    assert int(new_state.step) == 1
    lr, eps = config.optim.lr, config.optim.eps
    for p0, g, p1, e1 in zip(*(jax.tree.leaves(t) for t in (params0, grads, new_state.params,
                                                               new_state.ema_params))):
        # Adam's first bias-corrected step is −lr·g/(|g| + eps).
        np.testing.assert_allclose(p1, p0 - lr * g / (np.abs(g) + eps), rtol=1e-4, atol=1e-9)
        # θ' ← m·θ' + (1 − m)·θ with θ' = θ0 and no bias correction.
        np.testing.assert_allclose(e1, 0.9 * p0 + 0.1 * np.asarray(p1), rtol=1e-6, atol=1e-9)


def test_weight_decay_is_added_to_the_gradient_as_torch_adam():
    config, state, batch = setup(**{"optim.weight_decay": 0.5})
    rng = jax.random.key(2)
    params0 = host_copy(state.params)
    loss_fn = lambda p: losses.dsm_loss(get_score_fn(state.model, p), batch, state.sigmas, rng)
    grads = jax.grad(loss_fn)(state.params)
    new_state, _ = train.train_step(state, batch, rng)
    for p0, g, p1 in zip(*(jax.tree.leaves(t) for t in (params0, grads, new_state.params))):
        g = g + 0.5 * p0
        np.testing.assert_allclose(p1, p0 - config.optim.lr * g / (np.abs(g) + config.optim.eps),
                                   rtol=1e-4, atol=1e-9)


def test_eval_step_scores_the_ema_params():
    _, state, batch = setup()
    rng = jax.random.key(5)
    state = state.replace(ema_params=jax.tree.map(lambda p: p * 1.5, state.params))
    expected = losses.dsm_loss(get_score_fn(state.model, state.ema_params), batch, state.sigmas, rng)
    np.testing.assert_allclose(train.eval_step(state, batch, rng)["loss"], expected, rtol=1e-5)
    trained = losses.dsm_loss(get_score_fn(state.model, state.params), batch, state.sigmas, rng)
    assert abs(float(expected) - float(trained)) > 1e-3 * float(trained)


def test_training_lowers_the_loss():
    _, state, batch = setup(**{"optim.lr": 1e-3})
    key = jax.random.key(7)
    eval_key = jax.random.key(8)
    before = float(train.eval_step(state, batch, eval_key)["loss"])
    for step in range(30):
        state, _ = train.train_step(state, batch, jax.random.fold_in(key, step))
    after = float(losses.dsm_loss(get_score_fn(state.model, state.params), batch, state.sigmas, eval_key))
    # At initialisation the loss is about ½·D = 384; a working step must make clear progress.
    assert 0.5 * 768 * 0.5 < before < 0.5 * 768 * 2
    assert after < 0.7 * before


def test_data_parallel_step_equals_single_device_step():
    assert jax.device_count() == 4, "conftest.py sets four fake CPU devices"
    _, state, batch = setup()
    rng = jax.random.key(3)
    single_state, single_metrics = train.train_step(copy.deepcopy(state), batch, rng)

    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    sharded_batch = jax.device_put(batch, NamedSharding(mesh, PartitionSpec("data")))
    multi_state, multi_metrics = train.train_step(replicated, sharded_batch, rng)

    np.testing.assert_allclose(multi_metrics["loss"], single_metrics["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(multi_state.params), jax.tree.leaves(single_state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_cosine_schedule_steps_follow_the_closed_form():
    # Adam's bias-corrected steps on a constant gradient are ±lr_t exactly, so each parameter's change at
    # step t is lr·½(1 + cos(π·t/T)) (T = n_iters), down to 0 at the end.
    config = tiny.get_config()
    config.optim.lr_schedule = "cosine"
    config.training.n_iters = 4
    tx = train_state.make_optimizer(config)
    params = {"w": jnp.zeros(3)}
    opt_state = tx.init(params)
    grads = {"w": jnp.array([1.0, -2.0, 0.5])}
    for t in range(4):
        updates, opt_state = tx.update(grads, opt_state, params)
        expected = config.optim.lr * 0.5 * (1 + np.cos(np.pi * t / 4))
        # (float32 bias corrections: 1e-5 relative; a constant rate is off by 15% or more after step 0)
        np.testing.assert_allclose(np.abs(updates["w"]), expected, rtol=1e-4)
        np.testing.assert_array_equal(np.sign(updates["w"]), -np.sign(grads["w"]))


def test_init_places_the_state_on_every_device_and_matches_the_plain_init():
    config = tiny.get_config()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = train_state.init_train_state(config, jax.random.key(0), mesh)
    plain = train_state.create_train_state(config, jax.random.key(0))
    abstract = train_state.abstract_train_state(config, mesh)
    for leaf, reference, shape in zip(*(jax.tree.leaves(t) for t in (sharded, plain, abstract))):
        assert leaf.sharding == NamedSharding(mesh, PartitionSpec()) == shape.sharding
        assert leaf.shape == reference.shape == shape.shape and leaf.dtype == shape.dtype
        # One compiled program rather than op by op: the same values up to float32 rounding.
        np.testing.assert_allclose(leaf, reference, rtol=1e-6, atol=1e-6)
