"""SIGTERM and SIGINT (Ctrl-C) as requests to stop at the next step boundary, not in the middle of one.

A preemptible VM gets SIGTERM some seconds before it is taken away, and a user presses Ctrl-C: in both
cases the run should save the step it has reached and exit cleanly, so that the same command resumes
it. `StopSignals` records the first such signal; the training loop asks it after every step and then
saves and stops. A second Ctrl-C while it is saving interrupts at once (the default behaviour), for a
run that will not stop.

With several processes (`jax.distributed`), JAX's own preemption notifier owns SIGTERM and makes every
process stop at the same step (`Checkpointer.reached_preemption`); a Ctrl-C is turned into a SIGTERM
to this process, so that it takes the same road and every process agrees on the step.
"""
from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

# The exit codes of a run stopped by a signal after saving: 0 for a preemption (the job is done as far
# as a scheduler is concerned, and a rerun resumes), 128 + 2 for Ctrl-C, as shells report an interrupt.
EXIT_CODES = {signal.SIGTERM: 0, signal.SIGINT: 128 + signal.SIGINT}


class StoppedBySignal(Exception):
    """Training saved its state and stopped because of SIGTERM or SIGINT; not an error.

    Attributes:
      signal_number: the signal received.
      step: the step saved.
      exit_code: 0 for SIGTERM, 130 for SIGINT.
    """

    def __init__(self, signal_number: int, step: int, message: str):
        super().__init__(message)
        self.signal_number = signal_number
        self.step = step
        self.exit_code = EXIT_CODES.get(signal_number, 128 + signal_number)


class StopSignals:
    """A context manager that turns SIGTERM and SIGINT into a flag, restoring the handlers on exit.

    Args:
      multiprocess: True when JAX's distributed runtime handles SIGTERM (its preemption notifier): then
        only SIGINT is caught here, and forwarded to this process as SIGTERM.

    Handlers can only be set from the main thread; elsewhere (a notebook's worker thread) this does
    nothing and the signals keep their usual effect.
    """

    def __init__(self, multiprocess: bool = False):
        self._multiprocess = multiprocess
        self._previous: dict[int, Any] = {}
        self.received: int | None = None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for number in (signal.SIGINT,) if self._multiprocess else (signal.SIGTERM, signal.SIGINT):
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    @property
    def name(self) -> str:
        """The received signal's name, e.g. 'SIGTERM'."""
        return signal.Signals(self.received).name if self.received is not None else ""

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.received is not None and number == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the save
        self.received = number
        if self._multiprocess:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption notifier: every process stops together
