"""Training metrics to stdout, a JSONL file and TensorBoard, written by process 0 only."""
from __future__ import annotations

import json
import os
from typing import Mapping

import jax
from absl import logging


class MetricWriter:
    """Writes scalar metrics to the log, `<workdir>/metrics.jsonl` and TensorBoard event files.

    TensorBoard needs TensorFlow's summary writer; without TensorFlow (e.g. a GPU machine that has only
    JAX) the event files are skipped with one warning and the other outputs are unchanged. On hosts other
    than process 0 every call does nothing, so multi-host runs write one copy.
    """

    def __init__(self, workdir: str | os.PathLike):
        self._active = jax.process_index() == 0
        self._jsonl = None
        self._summary_writer = None
        if not self._active:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
        try:
            import tensorflow as tf  # pylint: disable=import-outside-toplevel

            tf.config.set_visible_devices([], "GPU")  # TensorFlow must not take accelerator memory
            self._summary_writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
        except ImportError:
            logging.warning("TensorFlow is not installed: no TensorBoard event files (metrics.jsonl is written)")

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        """Records `metrics` (name → number) at `step`."""
        if not self._active:
            return
        values = {name: float(value) for name, value in metrics.items()}
        logging.info("step %d: %s", step, ", ".join(f"{k}={v:.6g}" for k, v in values.items()))
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()
        if self._summary_writer is not None:
            import tensorflow as tf  # pylint: disable=import-outside-toplevel

            with self._summary_writer.as_default(step=step):
                for name, value in values.items():
                    tf.summary.scalar(name, value)
            self._summary_writer.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._summary_writer is not None:
            self._summary_writer.close()
