"""Checkpointer: exact round trips, sharded restores, retention, donation safety and damaged checkpoints."""
import logging
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from configs import tiny
from ncsn_jax import train, train_state
from ncsn_jax.errors import CheckpointMismatchError, CheckpointNotFoundError, UnreadableCheckpointError
from ncsn_jax.run import checkpoints

# When Orbax fails to read a damaged file, TensorStore later calls back into an event loop Orbax has
# closed; Python reports that as an unraisable exception, in whichever test is running by then.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def host_copy(tree):
    return jax.tree.map(np.array, tree)


def assert_bitwise_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert np.asarray(a).dtype == np.asarray(e).dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e), strict=True)


def small_state(value: float, step: int = 0) -> train_state.TrainState:
    """A train state of three numbers, for tests about files and policies rather than about the network."""
    params = {"w": jnp.full((3,), value)}
    return train_state.TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=(),
                            ema_params=params, sigmas=jnp.ones(2), model=None, tx=None, ema_rate=0.9)


def saved_steps(directory) -> list[int]:
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


@pytest.fixture(scope="module")
def trained():
    """The tiny config's state after two Adam steps (non-trivial moments, EMA ≠ params) and a batch."""
    config = tiny.get_config()
    # Committed to a device, as restored arrays are, so that both hit the same compiled train step.
    state = jax.device_put(train_state.create_train_state(config, jax.random.key(0)), jax.devices()[0])
    batch = jax.random.uniform(jax.random.key(1), (8, 16, 16, 3))
    for i in range(2):
        state, _ = train.train_step(state, batch, jax.random.key(10 + i))
    return config, state, batch


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    """A directory holding the trained state as checkpoint 2, and that state's host copy."""
    _, state, _ = trained
    directory = tmp_path_factory.mktemp("saved")
    with checkpoints.Checkpointer(directory) as checkpointer:
        assert checkpointer.save(2, state)
    return directory, host_copy(state)


def zeros_like_state(state):
    return state.replace(**{field: jax.tree.map(jnp.zeros_like, getattr(state, field))
                            for field in ("step", "params", "opt_state", "ema_params", "sigmas")})


def test_round_trip_is_exact_and_training_continues_identically(trained, saved):
    config, state, batch = trained
    directory, expected = saved
    template = zeros_like_state(state)  # so that every value must come from disk
    with checkpoints.Checkpointer(directory) as checkpointer:
        assert checkpointer.all_steps() == [2] and checkpointer.latest_step() == 2
        restored = checkpointer.restore_latest(template)
    assert_bitwise_equal(restored, expected)
    assert int(restored.step) == 2
    assert restored.model is template.model and restored.tx is template.tx
    assert restored.ema_rate == config.model.ema_rate

    rng = jax.random.key(99)
    from_original, _ = train.train_step(jax.tree.map(jnp.copy, state), batch, rng)
    from_restored, _ = train.train_step(restored, batch, rng)
    assert_bitwise_equal(from_restored, host_copy(from_original))


def test_restore_onto_a_replicated_template_takes_its_sharding(trained, saved):
    _, state, _ = trained
    directory, expected = saved
    replicated = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec())
    template = jax.device_put(zeros_like_state(state), replicated)
    with checkpoints.Checkpointer(directory) as checkpointer:
        restored = checkpointer.restore(2, template)
    for leaf in jax.tree.leaves(restored):
        assert leaf.sharding == replicated
        assert len(leaf.addressable_shards) == 4
    assert_bitwise_equal(restored, expected)


def test_a_template_of_another_network_is_refused(saved):
    directory, _ = saved
    config = tiny.get_config()
    config.model.ngf = 16
    template = jax.eval_shape(lambda key: train_state.create_train_state(config, key), jax.random.key(0))
    with checkpoints.Checkpointer(directory) as checkpointer:
        with pytest.raises(CheckpointMismatchError, match="different model.*begin_conv.*float32\\[3, 3, 3, 8\\].*"
                                             "float32\\[3, 3, 3, 16\\].*new --workdir"):
            checkpointer.restore_latest(template)
    assert saved_steps(directory) == [2]


def test_async_save_keeps_the_values_of_save_time_when_the_state_is_donated(trained, tmp_path):
    _, state, batch = trained
    state = jax.tree.map(jnp.copy, state)  # buffers of our own, to donate
    expected = host_copy(state)
    with checkpoints.Checkpointer(tmp_path, async_save=True) as checkpointer:
        assert checkpointer.save(2, state)
        # At once, as the training loop does: the step reuses the saved buffers, then whatever it did not
        # reuse is freed, while the files may still be being written.
        next_state, _ = train.train_step(state, batch, jax.random.key(5))
        for leaf in jax.tree.leaves(state):
            leaf.delete()
        jax.block_until_ready(next_state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(2, zeros_like_state(next_state))
    assert_bitwise_equal(restored, expected)


def test_retention_keeps_the_latest_and_every_multiple_of_keep_every(tmp_path):
    with checkpoints.Checkpointer(tmp_path, max_to_keep=2, keep_every=5) as checkpointer:
        for step in range(1, 13):
            assert checkpointer.save(step, small_state(float(step), step))
        checkpointer.wait_until_finished()
        # Multiples of 5, not "at least 5 steps apart" (which would keep 1, 6, 11), plus the latest 2.
        assert saved_steps(tmp_path) == [5, 10, 11, 12]
        assert checkpointer.all_steps() == [5, 10, 11, 12]
        restored = checkpointer.restore(5, small_state(0.0))
    np.testing.assert_array_equal(restored.params["w"], [5.0, 5.0, 5.0])


def test_save_skips_a_step_that_is_not_newer_unless_forced(tmp_path):
    with checkpoints.Checkpointer(tmp_path, async_save=False) as checkpointer:
        assert checkpointer.save(5, small_state(1.0))
        assert not checkpointer.save(5, small_state(2.0))
        assert not checkpointer.save(4, small_state(2.0))
        assert checkpointer.save(4, small_state(2.0), force=True)
        assert checkpointer.all_steps() == [4, 5]
        np.testing.assert_array_equal(checkpointer.restore(5, small_state(0.0)).params["w"], [1.0, 1.0, 1.0])


def truncate_array_files(step_dir: pathlib.Path):
    data = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data
    for path in data:
        path.write_bytes(b"")


def remove_state(step_dir: pathlib.Path):
    shutil.rmtree(step_dir / "state")


@pytest.mark.parametrize("damage", [truncate_array_files, remove_state])
def test_a_damaged_latest_checkpoint_is_reported_and_the_previous_one_restored(tmp_path, caplog, damage):
    with checkpoints.Checkpointer(tmp_path, async_save=False) as checkpointer:
        checkpointer.save(1, small_state(1.0, 1))
        checkpointer.save(2, small_state(2.0, 2))
    damage(tmp_path / "2")
    interrupted = tmp_path / "3.orbax-checkpoint-tmp-1700000000"  # what a save killed midway leaves
    (interrupted / "state").mkdir(parents=True)

    with checkpoints.Checkpointer(tmp_path, async_save=False) as checkpointer:
        assert checkpointer.all_steps() == [1, 2]
        with caplog.at_level(logging.WARNING):
            restored = checkpointer.restore_latest(small_state(0.0))
        assert int(restored.step) == 1
        np.testing.assert_array_equal(restored.params["w"], [1.0, 1.0, 1.0])
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        [damage_warning] = [w for w in warnings if "checkpoint 2 " in w and "cannot be read" in w]
        assert "\n" not in damage_warning and str(tmp_path) in damage_warning  # one line: where, and why
        assert ("size 0" in damage_warning) if damage is truncate_array_files else ("missing" in damage_warning)
        assert any(str(interrupted) in w and "not a finished checkpoint" in w for w in warnings), warnings
        assert (tmp_path / "2" / "state").exists() == (damage is truncate_array_files)
        assert saved_steps(tmp_path) == [1, 2] and interrupted.exists()  # nothing deleted

        # Training resumes from step 1 and saves step 2 again: the damaged one is moved aside, not lost.
        assert checkpointer.save(2, small_state(3.0, 2))
        checkpointer.wait_until_finished()
        assert checkpointer.all_steps() == [1, 2]
        [aside] = tmp_path.glob("2.unreadable-*")
        assert (aside / "state").exists() == (damage is truncate_array_files)
        np.testing.assert_array_equal(checkpointer.restore(2, small_state(0.0)).params["w"], [3.0, 3.0, 3.0])


def test_only_damaged_checkpoints_is_an_error(tmp_path):
    with checkpoints.Checkpointer(tmp_path, async_save=False) as checkpointer:
        checkpointer.save(1, small_state(1.0))
    truncate_array_files(tmp_path / "1")
    with checkpoints.Checkpointer(tmp_path) as checkpointer:
        with pytest.raises(UnreadableCheckpointError, match=r"none of .*steps \[1\].*--workdir"):
            checkpointer.restore_latest(small_state(0.0))
        with pytest.raises(UnreadableCheckpointError, match="checkpoint 1 .* cannot be read"):
            checkpointer.restore(1, small_state(0.0))
        with pytest.raises(CheckpointNotFoundError, match=r"no checkpoint of step 7 .*have \[1\]"):
            checkpointer.restore(7, small_state(0.0))
    assert saved_steps(tmp_path) == [1]


def test_a_missing_or_empty_directory_means_a_fresh_start(tmp_path):
    (tmp_path / "empty").mkdir()
    for directory in (tmp_path / "missing", tmp_path / "empty"):
        with checkpoints.Checkpointer(directory) as checkpointer:
            assert checkpointer.restore_latest(small_state(0.0)) is None
            assert checkpointer.all_steps() == [] and checkpointer.latest_step() is None
            # Without jax.distributed there is no preemption service: never a false alarm.
            assert not checkpointer.reached_preemption(1)


def test_a_relative_directory_is_taken_from_the_current_directory(tmp_path, monkeypatch):
    # As in the README's `--workdir runs/mnist`: Orbax itself refuses relative paths.
    monkeypatch.chdir(tmp_path)
    with checkpoints.Checkpointer(os.path.join("runs", "checkpoints")) as checkpointer:
        checkpointer.save(1, small_state(1.5, step=1))
    assert saved_steps(tmp_path / "runs" / "checkpoints") == [1]
    with checkpoints.Checkpointer("runs/checkpoints") as checkpointer:
        assert_bitwise_equal(host_copy(checkpointer.restore(1, small_state(0.0)).params), {"w": np.full(3, 1.5, np.float32)})


def test_a_sampling_template_reads_only_the_ema_parameters_and_the_ladder(trained, saved):
    config, state, _ = trained
    directory, expected = saved
    mesh = Mesh(np.array(jax.devices()), ("data",))
    template = train_state.abstract_sampling_state(config, mesh)
    with checkpoints.Checkpointer(directory) as checkpointer:
        restored = checkpointer.restore(2, template)
    assert isinstance(restored, train_state.SamplingState) and restored.model == template.model
    assert_bitwise_equal((restored.step, restored.ema_params, restored.sigmas),
                         (expected.step, expected.ema_params, expected.sigmas))
    # θ' differs from θ after two steps, so the restore cannot have read the training parameters.
    assert not np.array_equal(jax.tree.leaves(expected.ema_params)[0],
                              jax.tree.leaves(expected.params)[0])
    for leaf in jax.tree.leaves(restored):
        assert len(leaf.addressable_shards) == len(jax.devices())


def test_any_pytree_round_trips(tmp_path):
    tree = {"weights": [np.arange(6, dtype=np.float32).reshape(2, 3), np.int32(7)], "scale": np.float64(0.5)}
    with checkpoints.Checkpointer(tmp_path, async_save=False) as checkpointer:
        checkpointer.save(3, tree)
        restored = checkpointer.restore(3, jax.tree.map(np.zeros_like, tree))
    assert_bitwise_equal(restored, tree)
    with checkpoints.Checkpointer(tmp_path) as checkpointer:
        with pytest.raises(CheckpointMismatchError, match=r"weights/0 is float32\[2, 3\], expected float32\[3, 2\]"):
            checkpointer.restore(3, {**tree, "weights": [np.zeros((3, 2), np.float32), np.int32(0)]})
        with pytest.raises(CheckpointNotFoundError, match=r"no checkpoint of step 4 .*have \[3\]"):
            checkpointer.restore(4, tree)
