"""Training metrics to stdout, a JSONL file and TensorBoard, written by process 0 only."""
from __future__ import annotations

import json
import os
from typing import Mapping

import jax
from absl import logging

from ncsn_jax.errors import WorkdirError


class MetricWriter:
    """Writes scalar metrics to the log, `<workdir>/metrics.jsonl` and TensorBoard event files.

    TensorBoard event files are written with tensorboardX, which needs no TensorFlow (so it works on a
    machine that has only JAX); without tensorboardX they are skipped with one warning. On hosts other
    than process 0 every call does nothing, so multi-host runs write one copy.

    Args:
      workdir: the run's folder.
      resumed_step: the checkpoint step a resumed run continues from. The run before it may have logged
        steps after it (up to where it was killed), which this run logs again: those lines are dropped
        from `metrics.jsonl`, and TensorBoard is told to hide those events, so every step appears once.
    """

    def __init__(self, workdir: str | os.PathLike, resumed_step: int | None = None):
        self._active = jax.process_index() == 0
        self._workdir = os.fspath(workdir)
        self._jsonl = None
        self._summary_writer = None
        if not self._active:
            return
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, "metrics.jsonl")
        if resumed_step is not None:
            _drop_lines_after(path, resumed_step)
        self._jsonl = open(path, "a", encoding="utf-8")
        try:
            import tensorboardX  # pylint: disable=import-outside-toplevel

            # purge_step writes TensorBoard's restart marker: events of steps >= it from earlier files
            # are hidden, as the replayed steps are logged again.
            purge_step = None if resumed_step is None else resumed_step + 1
            self._summary_writer = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"),
                                                              purge_step=purge_step)
        except ImportError:
            logging.warning("tensorboardX is not installed: no TensorBoard event files (metrics.jsonl is written)")

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        """Records `metrics` (name → number) at `step`."""
        if not self._active:
            return
        values = {name: float(value) for name, value in metrics.items()}
        logging.info("step %d: %s", step, ", ".join(f"{k}={v:.6g}" for k, v in values.items()))
        try:
            self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
            self._jsonl.flush()
            if self._summary_writer is not None:
                for name, value in values.items():
                    self._summary_writer.add_scalar(name, value, step)
                self._summary_writer.flush()
        except OSError as error:  # a full disk, a quota, a folder removed under the run
            raise WorkdirError(f"writing the metrics to {self._workdir} failed: {error.strerror or error}. "
                               "Make room (or fix the folder) and run the same command again to resume.") from error

    def close(self) -> None:
        """Flushes and closes the files; the TensorBoard writer's thread ends here."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._summary_writer is not None:
            self._summary_writer.close()
            self._summary_writer = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _drop_lines_after(path: str, step: int) -> None:
    """Rewrites the JSONL log at `path` without its records of steps after `step` (and any torn last line)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as log:
        lines = log.read().splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if record.get("step", 0) <= step:
            kept.append(line)
    if len(kept) == len(lines):
        return
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as log:
        log.write("".join(line + "\n" for line in kept))
    os.replace(temporary, path)  # atomic: a kill now leaves the old log or the new one, never half of it
