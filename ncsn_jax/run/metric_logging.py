"""Training metrics to stdout, a JSONL file and TensorBoard, written by process 0 only."""
from __future__ import annotations

import io
import json
import os
import time
from typing import Mapping

import jax
from absl import logging

from ncsn_jax.errors import WorkdirError
from ncsn_jax.run import files

# Object storage has no appends: a log there is uploaded whole, at most this often (and at every `flush`).
REMOTE_UPLOAD_SECONDS = 30.0


class MetricWriter:
    """Writes scalar metrics to the log, `<workdir>/metrics.jsonl` and TensorBoard event files.

    TensorBoard event files are written with tensorboardX, which needs no TensorFlow (so it works on a
    machine that has only JAX); without tensorboardX they are skipped with one warning. On hosts other
    than process 0 every call does nothing, so multi-host runs write one copy.

    On a local disk every record is on disk when `write` returns. On object storage (gs://, s3://) the
    files are uploaded whole, every `REMOTE_UPLOAD_SECONDS` and at `flush` and `close`: call `flush`
    whenever a checkpoint is saved, so that a run killed later and resumed from it finds every record up
    to its step (the ones after it are logged again).

    Args:
      workdir: the run's folder, local or remote.
      resumed_step: the checkpoint step a resumed run continues from. The run before it may have logged
        steps after it (up to where it was killed), which this run logs again: those lines are dropped
        from `metrics.jsonl`, and TensorBoard is told to hide those events, so every step appears once.
    """

    def __init__(self, workdir: str | os.PathLike, resumed_step: int | None = None):
        self._active = jax.process_index() == 0
        self._workdir = os.fspath(workdir)
        self._remote = files.is_remote(self._workdir)
        self._path = files.metrics_file(workdir)
        self._lines: list[str] = []  # the whole log, where it is uploaded whole
        self._jsonl = None
        self._summary_writer = None
        self._last_upload = time.monotonic()
        if not self._active:
            return
        if self._remote and self._path.exists():
            self._lines = _lines_up_to(files.read_text(self._path), resumed_step)
        elif resumed_step is not None and self._path.exists():
            text = files.read_text(self._path)
            kept = _lines_up_to(text, resumed_step)
            if len(kept) != len(text.splitlines()):
                files.write_text(self._path, "".join(kept))  # whole: a kill leaves the old log or this one
        if not self._remote:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self._path, "a", encoding="utf-8")
        try:
            import tensorboardX  # pylint: disable=import-outside-toplevel

            if self._remote:
                _route_tensorboard_through_epath()
            # purge_step writes TensorBoard's restart marker: events of steps >= it from earlier files
            # are hidden, as the replayed steps are logged again.
            purge_step = None if resumed_step is None else resumed_step + 1
            self._summary_writer = tensorboardX.SummaryWriter(os.fspath(files.tensorboard_dir(workdir)),
                                                              purge_step=purge_step)
        except ImportError:
            logging.warning("tensorboardX is not installed: no TensorBoard event files (metrics.jsonl is written)")

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        """Records `metrics` (name → number) at `step`."""
        if not self._active:
            return
        values = {name: float(value) for name, value in metrics.items()}
        logging.info("step %d: %s", step, ", ".join(f"{k}={v:.6g}" for k, v in values.items()))
        line = json.dumps({"step": step, **values}) + "\n"
        self._guarded(self._record, line, values, step)

    def flush(self) -> None:
        """Puts every record written so far in the workdir (uploads them, on object storage)."""
        if self._active:
            self._guarded(self._upload)

    def close(self) -> None:
        """Flushes and closes the files; the TensorBoard writer's thread ends here."""
        try:
            self.flush()
        finally:
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

    def _record(self, line: str, values: Mapping[str, float], step: int) -> None:
        if self._summary_writer is not None:
            for name, value in values.items():
                self._summary_writer.add_scalar(name, value, step)
        if self._remote:
            self._lines.append(line)
            if time.monotonic() - self._last_upload >= REMOTE_UPLOAD_SECONDS:
                self._upload()
            return
        self._jsonl.write(line)
        self._upload()

    def _upload(self) -> None:
        if self._remote:
            files.write_text(self._path, "".join(self._lines))
            self._last_upload = time.monotonic()
        elif self._jsonl is not None:
            self._jsonl.flush()
        if self._summary_writer is not None:
            self._summary_writer.flush()

    def _guarded(self, action, *args) -> None:
        try:
            action(*args)
        except OSError as error:  # a full disk, a quota, a folder removed under the run, a lost bucket
            raise WorkdirError(f"writing the metrics to {self._workdir} failed: {error.strerror or error}. "
                               "Make room (or fix the folder) and run the same command again to resume.") from error


def _lines_up_to(text: str, step: int | None) -> list[str]:
    """The JSONL log's lines (with their newlines), without records of steps after `step` and torn lines."""
    kept = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if step is None or record.get("step", 0) <= step:
            kept.append(line + "\n")
    return kept


class _ObjectEventFile:
    """A TensorBoard event file on object storage: kept in memory, uploaded whole at each flush."""

    def __init__(self, location: str):
        self._location = location
        self._buffer = io.BytesIO()

    def write(self, data: bytes) -> None:
        self._buffer.write(data)

    def flush(self) -> None:
        files.write_bytes(self._location, self._buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _ObjectEventFiles:
    """tensorboardX's writer factory for a URL scheme, writing through `files` (epath)."""

    def open(self, location: str) -> _ObjectEventFile:
        return _ObjectEventFile(location)

    def directory_check(self, location: str) -> None:
        del location  # object storage has no folders to make


def _route_tensorboard_through_epath() -> None:
    # tensorboardX's own gs:// and s3:// writers need google-cloud-storage and boto3; these reach the
    # bucket the way every other file of the run does.
    from tensorboardX import record_writer  # pylint: disable=import-outside-toplevel

    for scheme in ("gs", "s3"):
        record_writer.register_writer_factory(scheme, _ObjectEventFiles())
