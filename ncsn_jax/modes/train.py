"""`--mode train`: the training loop, the one place where training does I/O (data, checkpoints, logs,
sample grids); the steps it runs are the pure functions of `ncsn_jax.train`.
"""
from __future__ import annotations

import contextlib
import signal
import time

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging
from jax.experimental import multihost_utils

from ncsn_jax import train, train_state
from ncsn_jax.data import pipeline
from ncsn_jax.errors import NonFiniteLossError
from ncsn_jax.modes import Options
from ncsn_jax.run import checkpoints, config_record, files, images, metric_logging
from ncsn_jax.run.lock import WorkdirLock
from ncsn_jax.runtime import data_parallel
from ncsn_jax.runtime.stop_signals import StopSignals, StoppedBySignal
from ncsn_jax.sampling import sharded
from ncsn_jax.train_state import TrainState


def run(config: ml_collections.ConfigDict, workdir: str, options: Options) -> TrainState:
    """The training loop (`options` holds nothing it reads).

    Resumes from the latest checkpoint in `<workdir>/checkpoints` when there is one: the state (step,
    parameters, Adam, EMA), the per-step keys (`fold_in(key, step)`) and the data position (a function of
    the step) all continue exactly, so an interrupted run ends where an uninterrupted one would.
    Logs the training loss every `log_freq` steps and the EMA test loss every `eval_freq` steps; saves a
    checkpoint and a sample grid every `snapshot_freq` steps and at the end. The config is saved as
    `<workdir>/config.json`, and a resumed run must agree with it on the fields that shape the arrays
    (`config_record`); log lines of steps after the resumed one are replaced, and a grid that a kill left
    undrawn is drawn.

    SIGTERM (a preemption) or SIGINT (Ctrl-C) makes it save the step reached and raise StoppedBySignal;
    with several processes, all stop at the same step.

    Returns:
      The final train state.

    Raises:
      StoppedBySignal: stopped early by a signal, after saving (not an error; see `stop_signals`).
      CheckpointMismatchError: the workdir's checkpoints are of another network, input size or ladder.
      NonFiniteLossError: the loss became NaN/inf (the checkpoints saved before it are kept).
      WorkdirError: another training run uses `workdir`; CheckpointWriteError (one): a checkpoint could not
        be written (the earlier ones are kept).
    """
    training = config.training
    mesh = data_parallel.data_mesh()
    host_batch_size = data_parallel.per_host_batch_size(training.batch_size, mesh)
    # Fails now rather than at the first snapshot.
    data_parallel.per_host_batch_size(config.sampling.batch_size, mesh, "sampling.batch_size")
    key = jax.random.key(config.seed)
    init_key, step_key, eval_key, sample_key = jax.random.split(key, 4)
    image_shape = (config.data.image_size, config.data.image_size, config.data.channels)

    # Every resource is closed on every path, errors included: pending checkpoint saves are completed
    # rather than lost, and no writer thread outlives the run.
    with contextlib.ExitStack() as resources:
        resources.enter_context(WorkdirLock(workdir, "train"))
        # From here a signal only asks to stop: it is honoured after the first step that follows it.
        stop_signals = resources.enter_context(StopSignals(multiprocess=jax.process_count() > 1))
        checkpointer = resources.enter_context(checkpoints.Checkpointer(
            files.checkpoints_dir(workdir), max_to_keep=training.keep_checkpoints,
            keep_every=training.keep_every,
        ))
        if checkpointer.latest_step() is not None:
            config_record.check_same_arrays(config, workdir)
        if jax.process_count() > 1:  # every process has read the saved config before process 0 replaces it
            multihost_utils.sync_global_devices("ncsn_jax.modes.train.config_checked")
        config_record.save(config, workdir)
        state = checkpointer.restore_latest(train_state.abstract_train_state(config, mesh))
        resumed = state is not None
        if not resumed:
            state = train_state.init_train_state(config, init_key, mesh)
        else:
            logging.info("resuming from step %d", int(state.step))
        start_step = int(state.step)
        last_saved = checkpointer.latest_step()

        def draw_grid(step: int) -> None:
            samples = sharded.draw_samples(
                state.score_fn(), state.sigmas, config.sampling, image_shape,
                jax.random.fold_in(sample_key, step), training.snapshot_samples, mesh, progress_bar=False,
            )
            if jax.process_index() == 0:
                images.save_grid(samples, files.training_grid(workdir, step))

        # A kill between a checkpoint and its grid leaves the grid undrawn: draw it now (same key).
        # Drawing is collective, so process 0 (which writes the grids) decides for all.
        grid_missed = (resumed and _is_snapshot(start_step, training)
                       and not files.exists(files.training_grid(workdir, start_step)))
        if jax.process_count() > 1:
            grid_missed = bool(multihost_utils.broadcast_one_to_all(np.int32(grid_missed)))
        if grid_missed and training.snapshot_samples:
            draw_grid(start_step)

        train_batches = data_parallel.prefetch_to_mesh(
            pipeline.get_dataset(config, "train", host_batch_size, start_step=start_step), mesh
        )
        test_batches = data_parallel.prefetch_to_mesh(
            pipeline.get_dataset(config, "test", host_batch_size, start_step=start_step // training.eval_freq),
            mesh,
        )
        writer = resources.enter_context(metric_logging.MetricWriter(workdir, start_step if resumed else None))
        progress = resources.enter_context(tqdm.tqdm(
            total=training.n_iters, initial=start_step, desc="train", unit="step",
            disable=jax.process_index() != 0, dynamic_ncols=True,
        ))

        window_losses: list[tuple[int, jax.Array]] = []
        window_start = time.perf_counter()
        for step in range(start_step, training.n_iters):
            state, metrics = train.train_step(state, next(train_batches), jax.random.fold_in(step_key, step))
            window_losses.append((step + 1, metrics["loss"]))
            done = step + 1
            progress.update(1)
            checkpointer.report_finished()  # a failed background save ends the run here, as the error it is

            if done % training.log_freq == 0 or done == training.n_iters:
                _raise_if_not_finite(window_losses, last_saved)
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
                eval_metrics = train.eval_step(state, next(test_batches), jax.random.fold_in(eval_key, done))
                writer.write(done, {"test/loss_ema": float(eval_metrics["loss"])})

            # Several processes stop at the step JAX's preemption sync picks (the same on all); one
            # process stops at the first step after the signal.
            stop = checkpointer.reached_preemption(done) or (
                jax.process_count() == 1 and stop_signals.received is not None)
            if _is_snapshot(done, training) or stop:
                _raise_if_not_finite(window_losses, last_saved)  # never save a state that has gone non-finite
                checkpointer.save(done, state, force=True)
                writer.flush()  # the metrics up to a checkpoint are in the workdir with it (object storage too)
                last_saved = done
                if training.snapshot_samples and not stop:
                    draw_grid(done)
            if stop:
                checkpointer.wait_until_finished()
                signal_number = stop_signals.received or signal.SIGTERM  # a preemption notice is a SIGTERM
                raise StoppedBySignal(signal_number, done, (
                    f"stopped by {signal.Signals(signal_number).name} after step {done}: saved checkpoint {done} "
                    f"in {checkpointer.directory}; run the same command to resume"))
    return state


def _is_snapshot(step: int, training: ml_collections.ConfigDict) -> bool:
    return step % training.snapshot_freq == 0 or step == training.n_iters


def _raise_if_not_finite(losses_by_step: list[tuple[int, jax.Array]], last_saved: int | None) -> None:
    for step, loss in losses_by_step:
        if not np.isfinite(float(loss)):
            kept = ("no checkpoint was saved before it" if last_saved is None else
                    f"the checkpoints up to step {last_saved} are kept")
            raise NonFiniteLossError(
                f"the training loss is {float(loss)} at step {step}; {kept}. Lower --config.optim.lr or "
                "check the data (pixel values must lie in [0, 1])."
            )
