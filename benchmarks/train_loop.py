"""Steps/s of the real training loop against the bare jitted step, measured in one run.

    python benchmarks/train_loop.py --config configs/mnist.py --steps 300
    python benchmarks/train_loop.py --config configs/cifar10.py --mock_data --steps 20 \
        --config.training.batch_size=8 --config.training.log_freq=10 --config.training.eval_freq=10

The loop is `ncsn_jax.modes.train.run` itself, on a temporary workdir: the data pipeline and prefetch,
the progress bar, logging to metrics.jsonl and TensorBoard, and the test-loss evaluations every
`training.eval_freq` steps. It first runs `--warmup_steps` steps (at least one log window and one test
loss, so that both compilations are behind it), then `--steps` more, and its rate is read from the
`train/steps_per_s` it logs for the windows after the warm-up. The snapshot at the end is outside every
window (it is a checkpoint and a sample grid, not a step). The bare step is the same jitted `train_step`
on the same state and a fixed batch, timed over `--steps` calls before the loop and `--steps` after it,
so that a machine whose speed drifts during the run affects both sides alike.

Prints one JSON line: both rates and their ratio (the loop's share of the bare step's rate).
`--mock_data` reads TFDS datasets (cifar10, celeba) from `tfds.testing.mock_data` (random images, the
real shapes), for machines without the dataset.
"""
import contextlib
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import configs  # noqa: E402  (the checkout's configs/, loaded by name or path)
from ncsn_jax.runtime import cpu_runtime  # noqa: E402

cpu_runtime.exec_with_mimalloc()  # as main.py does; NCSN_JAX_ALLOCATOR=system measures glibc's malloc

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402

import timing  # noqa: E402  (benchmarks/timing.py, beside this script: not a package)
from ncsn_jax import train  # noqa: E402
from ncsn_jax.modes import Options  # noqa: E402
from ncsn_jax.modes import train as train_mode  # noqa: E402
from ncsn_jax.runtime import data_parallel  # noqa: E402

configs.define_config_flag("config", None, "Config file, e.g. configs/mnist.py.", lock_config=False)
flags.DEFINE_integer("steps", 300, "Measured steps of the loop, and of the bare step before and after it.")
flags.DEFINE_integer("warmup_steps", None,
                     "Loop steps before the measurement (default: the first multiple of log_freq at or past "
                     "eval_freq, so that the first test loss and both compilations are behind it).")
flags.DEFINE_bool("mock_data", False, "Read TFDS datasets from tfds.testing.mock_data.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def bare_steps_per_s(config, steps):
    state, batch, step_key = timing.training_inputs(config, data_parallel.data_mesh(), config.training.batch_size)
    for step in range(2):  # compilation, then the first run's allocations
        state, metrics = train.train_step(state, batch, jax.random.fold_in(step_key, step))
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for step in range(steps):
        state, metrics = train.train_step(state, batch, jax.random.fold_in(step_key, step))
    jax.block_until_ready(metrics)
    return steps / (time.perf_counter() - start)


def loop_steps_per_s(config, warmup_steps, steps):
    training = config.training
    training.n_iters = warmup_steps + steps
    training.snapshot_freq = training.n_iters  # one checkpoint, at the end, outside the timed windows
    training.snapshot_samples = 0
    data = contextlib.nullcontext()
    if FLAGS.mock_data:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

        data = tfds.testing.mock_data(num_examples=max(1_000, 4 * training.batch_size))
        config.data.decode_processes = 0  # the mock is patched into this process only
    with tempfile.TemporaryDirectory() as workdir, data:
        train_mode.run(config, workdir, Options("train"))
        with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
    windows = [r for r in records if "train/steps_per_s" in r and r["step"] > warmup_steps]
    # Each window's rate is log_freq steps over its seconds: the loop's rate is their harmonic mean.
    seconds = sum(training.log_freq / r["train/steps_per_s"] for r in windows)
    return len(windows) * training.log_freq / seconds, len(windows)


def main(_):
    logging.set_verbosity(logging.WARNING)
    config = FLAGS.config
    training = config.training
    if FLAGS.steps % training.log_freq:
        raise app.UsageError(f"--steps {FLAGS.steps} must be a multiple of training.log_freq {training.log_freq}")
    warmup = FLAGS.warmup_steps
    if warmup is None:
        warmup = -(-max(training.eval_freq, training.log_freq) // training.log_freq) * training.log_freq
    if warmup % training.log_freq:
        raise app.UsageError(f"--warmup_steps {warmup} must be a multiple of training.log_freq {training.log_freq}")
    bare_before = bare_steps_per_s(config, FLAGS.steps)
    loop, windows = loop_steps_per_s(config, warmup, FLAGS.steps)
    bare_after = bare_steps_per_s(config, FLAGS.steps)
    bare = 2 / (1 / bare_before + 1 / bare_after)
    print(json.dumps({
        "benchmark": "train_loop",
        "model": config.model.name,
        "ngf": config.model.ngf,
        "batch_size": training.batch_size,
        "device_count": jax.device_count(),
        "eval_freq": training.eval_freq,
        "log_freq": training.log_freq,
        "measured_steps": FLAGS.steps,
        "loop_windows": windows,
        "bare_steps_per_s_before": round(bare_before, 4),
        "bare_steps_per_s_after": round(bare_after, 4),
        "loop_steps_per_s": round(loop, 4),
        "loop_over_bare": round(loop / bare, 4),
    }))


if __name__ == "__main__":
    app.run(main)
