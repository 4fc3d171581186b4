"""Times a config's input pipeline alone: images per second on this host, and first-batch latency.

    python benchmarks/input_pipeline.py --config configs/mnist.py --batch_size 128 --num_batches 200
    python benchmarks/input_pipeline.py --config configs/cifar10.py --mock  # TFDS mock data, no files

Prints one JSON line. `first_batch_s` runs from the `get_dataset` call to the first batch (listing files,
loading MNIST, opening TFDS); `resume_first_batch_s` is the same at `--resume_step`, which should cost no
more: a resumed pipeline computes where it is instead of reading up to there. `--mock` serves TFDS's random
fake examples (`"mock": true` in the output), so it times the pipeline around them, not real decoding.
"""
import contextlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

import configs  # noqa: E402  (the checkout's configs/, loaded by name or path)
from ncsn_jax.data import pipeline  # noqa: E402

configs.define_config_flag("config", None, "Config file, e.g. configs/mnist.py.", lock_config=True)
flags.DEFINE_integer("batch_size", 128, "Images per batch on this host.")
flags.DEFINE_integer("num_batches", 200, "Timed batches after the first one.")
flags.DEFINE_enum("split", "train", ["train", "test"], "Split to read.")
flags.DEFINE_integer("resume_step", 1_000_000, "Batch at which the resume latency is measured.")
flags.DEFINE_bool("mock", False, "Read TFDS datasets from tfds.testing.mock_data instead of files.")
flags.DEFINE_integer("mock_examples", 50_000, "Examples per split with --mock.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def first_batch(config, start_step):
    start = time.perf_counter()
    iterator = pipeline.get_dataset(config, FLAGS.split, FLAGS.batch_size, start_step=start_step)
    batch = next(iterator)
    return iterator, batch, time.perf_counter() - start


def main(_):
    config = FLAGS.config
    if FLAGS.mock:
        import tensorflow_datasets as tfds

        mocked = tfds.testing.mock_data(num_examples=FLAGS.mock_examples)
        config.data.decode_processes = 0  # the mock is patched into this process only
    else:
        mocked = contextlib.nullcontext()
    with mocked:
        iterator, batch, first_batch_s = first_batch(config, 0)
        start = time.perf_counter()
        for _ in range(FLAGS.num_batches):
            batch = next(iterator)
        seconds = time.perf_counter() - start
        iterator.close()  # its threads would otherwise keep decoding ahead during the next measurement
        _, _, resume_first_batch_s = first_batch(config, FLAGS.resume_step)
    print(json.dumps({
        "benchmark": "input_pipeline",
        "dataset": config.data.dataset,
        "mock": FLAGS.mock,
        "split": FLAGS.split,
        "batch_shape": list(batch.shape),
        "batch_size": FLAGS.batch_size,
        "num_batches": FLAGS.num_batches,
        "cpu_count": os.cpu_count(),
        "first_batch_s": round(first_batch_s, 3),
        "resume_step": FLAGS.resume_step,
        "resume_first_batch_s": round(resume_first_batch_s, 3),
        "images_per_s": round(FLAGS.batch_size * FLAGS.num_batches / seconds, 1),
    }))


if __name__ == "__main__":
    app.run(main)
