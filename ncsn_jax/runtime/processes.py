"""Several JAX processes (TPU slices, GPU clusters, CPU machines): starting them, and ending them together.

`start` calls `jax.distributed.initialize`, with the coordinator, count and id given or, without them,
detected by JAX (TPU VMs, SLURM, ...). CPU processes exchange their collectives over gloo.

JAX's own failure handling ends a process with a C++ stack trace (exit 134): when the coordinator
cannot be reached within `initialization_timeout`, and when another process stops sending heartbeats
(after `heartbeat_timeout_seconds`, during which the survivors hang in their collectives). So this
module watches both itself, with shorter timeouts, and ends the process with one `error:` line first:

- joining: a timer that fires if `jax.distributed.initialize` has not returned in time;
- running: a watchdog thread per process that publishes a counter in the coordination service's
  key-value store every second and reads the others'. A counter that stops moving for
  `heartbeat_timeout` seconds, or a store that stops answering (process 0, which hosts it, is gone),
  ends this process. A process that finishes its work calls `finish`, which publishes "done", so that
  the others, still writing their last files, do not take it for lost; one that fails stops beating.

The last checkpoint that every process committed survives any of this (Orbax finalises a checkpoint
only once all processes have written their part), and the same commands resume from it.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
import time

import jax
from jax._src import distributed as jax_distributed  # its client: the coordination service's key-value store

from ncsn_jax.errors import ConfigError

_BEAT_SECONDS = 1.0
_KEY = "ncsn_jax/alive/{}"
_DONE = "done"
# JAX's own limits are kept this much longer than ours, so that ours fire first and say what happened.
_JAX_TIMEOUT_MARGIN_SECONDS = 60


def start(coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None,
          *, initialization_timeout: int = 300, heartbeat_timeout: int = 30) -> None:
    """Joins this process to the others of the run and starts the watchdog.

    Args:
      coordinator_address: "host:port" of process 0 (it listens there); with `num_processes` and
        `process_id`, or all three None for JAX's cluster detection.
      num_processes: how many processes the run has.
      process_id: this process's index, 0 ... num_processes - 1.
      initialization_timeout: seconds to wait for every process to join.
      heartbeat_timeout: seconds of silence after which another process counts as lost.

    Raises:
      ConfigError: the three are not given together, or the id is out of range.
    """
    given = [value is not None for value in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ConfigError("--coordinator_address, --num_processes and --process_id go together (or none of "
                          "them, for JAX to detect the cluster)")
    if all(given) and not 0 <= process_id < num_processes:
        raise ConfigError(f"--process_id {process_id} is not in [0, --num_processes={num_processes})")
    if initialization_timeout < 1 or heartbeat_timeout < 1:
        raise ConfigError("--initialization_timeout and --heartbeat_timeout must be positive (seconds)")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes; others ignore it

    where = f"the coordinator at {coordinator_address}" if coordinator_address else "the coordinator"
    joining = threading.Timer(initialization_timeout, _end, args=(
        f"not every process joined {where} within {initialization_timeout} s: start the same command on every "
        "host, with the same --coordinator_address and --num_processes and a different --process_id each, and "
        "check that each host can reach the address",))
    joining.daemon = True
    joining.start()
    jax.distributed.initialize(
        coordinator_address, num_processes, process_id,
        initialization_timeout=initialization_timeout + _JAX_TIMEOUT_MARGIN_SECONDS,
        heartbeat_timeout_seconds=heartbeat_timeout + _JAX_TIMEOUT_MARGIN_SECONDS,
    )
    joining.cancel()
    global _watchdog  # pylint: disable=global-statement
    if jax.process_count() > 1:
        _watchdog = _Watchdog(heartbeat_timeout)
        _watchdog.start()


def finish() -> None:
    """Tells the other processes that this one has finished its work (so its silence is not a loss)."""
    if _watchdog is not None:
        _watchdog.stop(done=True)


def end_now(message: str, exit_code: int = 1) -> None:
    """Prints `message` as one line and ends this process at once, without JAX's shutdown barrier.

    For a process that stops while the others may still be running: the barrier would wait for them
    (and they, in their collectives, for it); the watchdogs of the others see this one's silence instead.
    """
    print(" ".join(str(message).split()), file=sys.stderr, flush=True)
    os._exit(exit_code)  # pylint: disable=protected-access


# What a CPU collective raises when its peer process is gone (gloo's TCP transport).
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer")


def lost_a_peer(error: BaseException) -> bool:
    """Whether `error` is a collective that failed because another process is gone."""
    return isinstance(error, jax.errors.JaxRuntimeError) and any(text in str(error) for text in _PEER_LOST)


def _end(message: str) -> None:
    end_now("error: " + message)


_watchdog: _Watchdog | None = None


class _Watchdog(threading.Thread):
    def __init__(self, heartbeat_timeout: int):
        super().__init__(name="ncsn_jax-watchdog", daemon=True)
        self._client = jax_distributed.global_state.client
        self._me, self._count = jax.process_index(), jax.process_count()
        self._timeout = heartbeat_timeout
        self._finished = threading.Event()

    def start(self) -> None:
        super().start()
        atexit.register(self.stop)  # runs before JAX's own exit handler (its shutdown barrier)

    def stop(self, done: bool = False) -> None:
        """Stops beating; with `done`, first tells the others that this process finished normally."""
        if self._finished.is_set():
            return
        self._finished.set()
        if done:
            try:
                self._client.key_value_set(_KEY.format(self._me), _DONE, allow_overwrite=True)
            except Exception:  # pylint: disable=broad-exception-caught
                pass  # the store is gone: nobody is left to tell

    def run(self) -> None:
        beat = 0
        last_seen = {other: (None, time.monotonic()) for other in range(self._count) if other != self._me}
        while not self._finished.wait(_BEAT_SECONDS):
            try:
                beat += 1
                self._client.key_value_set(_KEY.format(self._me), str(beat), allow_overwrite=True)
                values = {other: self._try_get(other) for other in last_seen}
            except Exception as error:  # pylint: disable=broad-exception-caught
                if self._finished.is_set():
                    return
                _end(f"lost contact with process 0, which coordinates this run ({type(error).__name__}: "
                     f"{str(error).splitlines()[0][:200]}); it has probably stopped. Run the same commands again "
                     "on every host to resume from the last checkpoint that all processes committed")
                return
            now = time.monotonic()
            for other, value in values.items():
                previous, since = last_seen[other]
                if value == _DONE or value != previous:
                    last_seen[other] = (value, now)
                elif now - since > self._timeout and not self._finished.is_set():
                    _end(f"process {other} of {self._count} has given no sign of life for {self._timeout} s "
                         f"(--heartbeat_timeout), so process {self._me} stops too. Run the same commands again on "
                         "every host to resume from the last checkpoint that all processes committed")

    def _try_get(self, other: int) -> str | None:
        try:
            return self._client.key_value_try_get(_KEY.format(other))
        except Exception as error:  # pylint: disable=broad-exception-caught
            if "NOT_FOUND" in str(error) or "not found" in str(error).lower():
                return None  # it has not beaten yet
            raise
