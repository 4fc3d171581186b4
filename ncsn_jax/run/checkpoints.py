"""Saving and restoring pytrees of arrays with Orbax: asynchronous, sharding-aware, robust to damage.

A `Checkpointer` owns one directory of step checkpoints (`<directory>/<step>/state`), written by
`orbax.checkpoint.CheckpointManager` with the pytree handler. It knows nothing of what the trees hold
(the train state, for this project); it imports only the project's leaf modules `errors` and `trees`.
What it adds to the manager:

- retention as this project wants it: the latest `max_to_keep` checkpoints plus every one whose step is a
  multiple of `keep_every` (kept for later FID sweeps);
- restoring onto a template: the arrays take the template's shapes and shardings (e.g. replicated over
  a device mesh; `jax.ShapeDtypeStruct`s are enough), static fields come from the template;
- partial restores: a template with only some of the saved fields (sampling needs θ' and the ladder,
  not Adam's moments) reads only those arrays;
- a template whose arrays differ from the saved ones is refused with an error that names the
  differences and says what to do, before any array is read;
- a damaged latest checkpoint is reported and the one before it is used; nothing on disk is deleted.

Saving is asynchronous: `save` returns once Orbax holds the arrays in host memory (it copies them device
to host before returning), so the caller may donate the state's buffers to the next train step at once;
the files are written in a background thread.
"""
from __future__ import annotations

import logging as python_logging
import os
import sys
import threading
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from ncsn_jax import trees
from ncsn_jax.errors import (CheckpointMismatchError, CheckpointNotFoundError, CheckpointWriteError,
                             UnreadableCheckpointError)
from ncsn_jax.run import files

_STATE = "state"
# Orbax names a step directory by the bare step number; a set-aside damaged checkpoint gets this suffix,
# which Orbax does not read as a step.
_UNREADABLE_SUFFIX = ".unreadable"


def silence_abandoned_io() -> None:
    """Keeps the noise of abandoned reads and writes off stderr (for programs; idempotent).

    When one array of a checkpoint cannot be read, Orbax gives up the restore while its other reads are
    still running: asyncio later logs each abandoned task's error with a traceback ("Task exception was
    never retrieved"), and TensorStore calls back into the event loop Orbax has closed, which Python
    reports as an unraisable exception; a failed background save leaves Orbax coroutines that fail again
    when the interpreter shuts down, and its background threads log the failure with a traceback for each.
    `restore_latest` and `wait_until_finished` say in one line what is damaged or failed and why, so the
    first two are dropped and Orbax's error records keep their message but lose their traceback (those
    of threads still running at shutdown are dropped); every other record and unraisable exception
    passes. Only for programs in which nothing but Orbax runs asyncio tasks (main.py).
    """
    asyncio_logger = python_logging.getLogger("asyncio")
    if not any(isinstance(f, _AbandonedOrbaxTasks) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_AbandonedOrbaxTasks())
    absl_logger = python_logging.getLogger("absl")
    if not any(isinstance(f, _OrbaxErrorsWithoutTracebacks) for f in absl_logger.filters):
        absl_logger.addFilter(_OrbaxErrorsWithoutTracebacks())
    if not getattr(sys.unraisablehook, "_ncsn_jax", False):
        previous = sys.unraisablehook

        def hook(unraisable):
            error, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
            closed_loop = isinstance(error, RuntimeError) and "Event loop is closed" in str(error)
            orbax_coroutine = code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename
            if not (closed_loop or orbax_coroutine):
                previous(unraisable)

        hook._ncsn_jax = True
        sys.unraisablehook = hook


class _AbandonedOrbaxTasks(python_logging.Filter):
    # Only Orbax (with TensorStore) runs asyncio tasks in this program, so an asyncio task whose error
    # nobody retrieved is one of its abandoned reads.
    def filter(self, record: python_logging.LogRecord) -> bool:
        return "exception was never retrieved" not in record.getMessage()


# Set once a failed save has been raised as CheckpointWriteError (see `_OrbaxErrorsWithoutTracebacks`).
_save_failure_reported = threading.Event()


class _OrbaxErrorsWithoutTracebacks(python_logging.Filter):
    def filter(self, record: python_logging.LogRecord) -> bool:
        if record.levelno >= python_logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname:
            # Once a failed save has been reported as the run's error, the background threads of that save
            # that are still finishing (or say that the interpreter is shutting down) only repeat it: they
            # are dropped, so that the program's own error line stays the last one.
            if _save_failure_reported.is_set() or "after interpreter shutdown" in record.getMessage():
                return False
            record.exc_info, record.exc_text = None, None
        return True


class Checkpointer:
    """Saves and restores pytrees of arrays in one directory of step checkpoints.

    Usable as a context manager, which waits for pending saves and closes on exit. All hosts must make
    the same calls in the same order (Orbax synchronises them).

    Args:
      directory: where the step checkpoints live (created when missing), e.g. `<workdir>/checkpoints`;
        a relative path is taken from the current directory.
      max_to_keep: the number of latest checkpoints kept; older ones are deleted after each save unless
        `keep_every` keeps them.
      keep_every: also keep, forever, every checkpoint whose step is a multiple of this; 0 or None: none.
      async_save: write the files in a background thread (`save` returns after the device-to-host copy).
      keep_best_by: instead of the latest checkpoints, keep only the one with the lowest value of this
        metric (e.g. "fd", for the best checkpoint by FID); `save` then needs `metrics` holding it.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int = 3,
        keep_every: int | None = None,
        async_save: bool = True,
        keep_best_by: str | None = None,
    ):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be at least 1, got {max_to_keep}")
        if keep_every is not None and keep_every < 0:
            raise ValueError(f"keep_every must be positive (or 0/None for none), got {keep_every}")
        directory = files.path(directory)  # absolute, as Orbax needs; gs:// and other URLs as they are
        if keep_best_by:
            # Orbax's best_fn (rather than a BestN preservation policy) also ranks the checkpoints a
            # previous run saved, from the metrics stored beside them.
            options = ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda metrics: metrics[keep_best_by], best_mode="min",
                keep_checkpoints_without_metrics=False, enable_async_checkpointing=async_save,
            )
        else:
            policies = ocp.checkpoint_managers
            keep = [policies.LatestN(max_to_keep)]
            if keep_every:
                keep.append(policies.EveryNSteps(keep_every))
            options = ocp.CheckpointManagerOptions(
                preservation_policy=policies.AnyPreservationPolicy(keep), enable_async_checkpointing=async_save,
            )
        self._manager = ocp.CheckpointManager(
            directory, item_handlers={_STATE: ocp.PyTreeCheckpointHandler()}, options=options,
        )
        # Steps that `restore_latest` found damaged and skipped; set aside at the next save (see `save`).
        self._unreadable: list[int] = []
        # The step of a save started and not yet known to be on disk.
        self._pending: int | None = None
        # Whether a failed save was raised as CheckpointWriteError already.
        self._reported_failure = False

    @property
    def directory(self) -> str:
        """The directory of step checkpoints."""
        return os.fspath(self._manager.directory)

    def all_steps(self) -> list[int]:
        """The steps of the checkpoints on disk, ascending (interrupted saves are not checkpoints)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest checkpoint's step, or None when there is none."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, *, force: bool = False,
             metrics: dict[str, float] | None = None) -> bool:
        """Starts writing the arrays of `state` as the checkpoint of `step`.

        Returns once the arrays are copied to host memory, so `state` may be donated to the next train
        step right away; the files are written in the background (see `wait_until_finished`). Damaged
        checkpoints that `restore_latest` skipped are first moved aside to `<step>.unreadable-<time>`, so
        that this run can write those steps again.

        Args:
          step: the checkpoint's label, normally `int(state.step)`.
          state: a pytree of arrays (e.g. the train state; a flax struct's static fields are not saved).
          force: write even when a checkpoint of a later step exists; without it such a call, or one for
            a step already saved, writes nothing and returns False.
          metrics: scalars stored with the checkpoint (needed with `keep_best_by`).

        Returns:
          Whether a checkpoint was started.

        Raises:
          ValueError: (Orbax's StepAlreadyExistsError) `force` and a checkpoint of `step` exists: steps are
            never overwritten.
          CheckpointWriteError: the previous save failed to write its files (e.g. the disk is full).
        """
        self.wait_until_finished()  # the previous save's failure is reported as what it is
        self._set_aside_unreadable()
        started = self._manager.save(step, args=ocp.args.Composite(**{_STATE: ocp.args.PyTreeSave(state)}),
                                     force=force, metrics=metrics)
        if started:
            self._pending = step
        return started

    def restore(self, step: int, template: Any) -> Any:
        """The checkpoint of `step`, with the arrays placed as in `template`.

        Args:
          step: a step of `all_steps()`.
          template: a pytree of arrays or `jax.ShapeDtypeStruct`s (with shardings) that give the
            shapes, dtypes and shardings of the result; static fields are kept. It may hold only some
            of the saved fields (a partial restore reads only those); every field it holds must have
            been saved, with the same shape and dtype.

        Raises:
          CheckpointNotFoundError: there is no checkpoint of `step`.
          CheckpointMismatchError: the checkpoint's arrays are not those of `template`.
          UnreadableCheckpointError: the checkpoint's files are damaged.
        """
        steps = self.all_steps()
        if step not in steps:
            raise CheckpointNotFoundError(f"no checkpoint of step {step} in {self.directory} (have {steps})")
        return self._restore(step, template)

    def restore_latest(self, template: Any) -> Any | None:
        """The newest readable checkpoint, with the arrays placed as in `template`; None when there is none.

        A damaged checkpoint is skipped with a warning that names its step and the reason, and the one
        before it is tried; nothing is deleted. Directories left by interrupted saves are ignored, with a
        warning.

        Args:
          template: as for `restore`.

        Raises:
          CheckpointMismatchError: the checkpoints' arrays are not those of `template`.
          UnreadableCheckpointError: checkpoints exist but none can be read.
        """
        for leftover in ocp.step.all_temporary_paths(self._manager.directory):
            logging.warning("ignoring %s: not a finished checkpoint but a save in progress or, if none is, "
                            "one that was interrupted (then delete it to free the space)", leftover.get())
        unreadable = []
        for step in reversed(self.all_steps()):
            try:
                state = self._restore(step, template)
            except UnreadableCheckpointError as error:
                logging.warning("%s; trying the checkpoint before it. It stays on disk and is moved aside "
                                "to %d%s-<time> when this run saves again.", error, step, _UNREADABLE_SUFFIX)
                unreadable.append(step)
                continue
            self._unreadable = unreadable
            return state
        if unreadable:
            raise UnreadableCheckpointError(
                f"none of the checkpoints in {self.directory} can be read (steps {sorted(unreadable)}; the "
                "warnings above give the reasons). Move them out of the directory to start afresh, or use "
                "a new --workdir."
            )
        return None

    def reached_preemption(self, step: int) -> bool:
        """Whether every host should save at `step` and stop, because the job is being preempted.

        JAX turns a preemption notice (SIGTERM, TPU maintenance) that reaches any host into one step that
        every host reaches, so call this at every step with the same step on every host. The notices go
        through JAX's distributed runtime: this is always False unless `jax.distributed.initialize()` ran.
        """
        return self._manager.reached_preemption(step)

    def report_finished(self) -> int | None:
        """Without blocking: the step of a save that has finished since the last report, else None.

        A finished save is logged as saved here (or in `wait_until_finished`), never when it starts, so
        the log says "saved" only of checkpoints that are on disk. Call it every step to hear early of a
        save that failed.

        Raises:
          CheckpointWriteError: the save failed (see `wait_until_finished`).
        """
        if self._pending is None or self._manager.is_saving_in_progress():
            return None
        step = self._pending
        self.wait_until_finished()
        return step

    def wait_until_finished(self) -> None:
        """Blocks until every started save is on disk, and logs each as saved.

        Raises:
          CheckpointWriteError: a save failed to write its files; the message says why (e.g. no space left
            on the device) and which checkpoint is the latest complete one.
        """
        pending, self._pending = self._pending, None
        try:
            self._manager.wait_until_finished()
        except Exception as error:  # pylint: disable=broad-exception-caught
            if pending is None:
                if self._reported_failure:
                    return  # Orbax raises a failed save's error at every wait; it was reported once
                raise
            self._reported_failure = True
            _save_failure_reported.set()
            self._manager.reload()
            latest = self.latest_step()
            kept = ("no checkpoint is complete" if latest is None
                    else f"the latest complete checkpoint is step {latest}")
            raise CheckpointWriteError(
                f"writing checkpoint {pending} to {self.directory} failed: {_write_failure_reason(error)}; "
                f"{kept}. Make room (or fix the folder) and run the same command again to resume."
            ) from error
        if pending is not None:
            logging.info("saved checkpoint %d in %s", pending, self.directory)

    def close(self) -> None:
        """Waits for pending saves (see `wait_until_finished`) and releases the manager's threads."""
        try:
            self.wait_until_finished()
        finally:
            try:
                self._manager.close()
            except Exception:  # pylint: disable=broad-exception-caught
                # A failed save has several errors (one per file it could not write); Orbax raises the
                # first at a wait and may raise another at close. The failure was reported once, as the
                # error that ends the run; a second report would bury that line under a traceback.
                if not self._reported_failure:
                    raise

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _restore(self, step: int, template: Any) -> Any:
        """Restores `step`: UnreadableCheckpointError for damage, CheckpointMismatchError for other arrays."""

        def unreadable(error: Exception) -> UnreadableCheckpointError:
            return UnreadableCheckpointError(
                f"checkpoint {step} in {self.directory} cannot be read: {type(error).__name__}: {error}")

        # Orbax and TensorStore raise ValueError, KeyError, OSError, ... depending on which file is damaged
        # and how, so any failure to read counts as damage; whether the arrays match is decided from the
        # saved shapes, between the two reads, so that a mismatch is never mistaken for damage.
        item = self._manager.directory / str(step) / _STATE
        if not item.exists():  # else Orbax says "Unknown key: state"
            raise UnreadableCheckpointError(f"checkpoint {step} in {self.directory} cannot be read: its folder "
                                            f"{item} is missing")
        try:
            saved = self._manager.item_metadata(step)[_STATE]
            if saved is None:
                raise FileNotFoundError(f"its '{_STATE}' item is missing")
            saved_layout = trees.shapes(saved.tree, with_dtype=True)
        except Exception as error:  # pylint: disable=broad-exception-caught
            raise unreadable(error) from error
        _check_same_arrays(step, self.directory, saved_layout, template)
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**{_STATE: ocp.args.PyTreeRestore(
                target, restore_args=restore_args, partial_restore=True)}))
        except Exception as error:  # pylint: disable=broad-exception-caught
            raise unreadable(error) from error
        return restored[_STATE]

    def _set_aside_unreadable(self) -> None:
        """Moves the damaged checkpoints skipped by `restore_latest` out of Orbax's sight (not deleted).

        They are newer than the restored step, so left in place they would block this run's saves of the
        same steps (Orbax never overwrites a step) and count towards `max_to_keep`.
        """
        if not self._unreadable:
            return
        if jax.process_index() == 0:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for step in self._unreadable:
                source = self._manager.directory / str(step)
                target = source.parent / f"{step}{_UNREADABLE_SUFFIX}-{stamp}"
                source.rename(target)
                logging.warning("moved the unreadable checkpoint %d aside to %s", step, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("ncsn_jax.run.checkpoints.set_aside_unreadable")
        self._manager.reload()
        self._unreadable = []


# What a failed write ran into, as the operating system says it (TensorStore puts it inside long messages).
_WRITE_FAILURES = ("No space left on device", "Disk quota exceeded", "Permission denied", "Read-only file system",
                   "File too large")


def _write_failure_reason(error: Exception) -> str:
    text = str(error)
    for reason in _WRITE_FAILURES:
        if reason in text:
            return reason.lower().replace("device", "the device")
    return text.splitlines()[0][:300] if text else type(error).__name__


def _check_same_arrays(step: int, directory: str, saved_layout: dict[str, Any], template: Any) -> None:
    """Raises CheckpointMismatchError naming the differences when `template`'s arrays were not saved so.

    Saved fields that `template` lacks are fine (a partial restore); the ones it has must match.
    """
    wanted = trees.shapes(ocp.tree.serialize_tree(template), with_dtype=True)
    fields = {name.split("/", 1)[0] for name in wanted}
    saved = {name: layout for name, layout in saved_layout.items() if name.split("/", 1)[0] in fields}
    differences = trees.differences(saved, wanted)
    if differences:
        raise CheckpointMismatchError(
            f"{directory} holds checkpoints of a different model than the config's (step {step}: "
            f"{trees.summary(differences)}). Use a new --workdir for this config, or run with the config "
            "those checkpoints were trained with."
        )
