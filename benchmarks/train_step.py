"""Times the jitted training step and one score evaluation (forward pass) of a config's network.

    python benchmarks/train_step.py --config configs/cifar10.py --batch_size 8

Prints one JSON line: compile times, and the median of `--repeats` timed calls after one warm-up call.
Config fields can be overridden as in main.py, e.g. `--config.model.dtype=bfloat16`.
"""
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ncsn_jax import train  # noqa: E402
from ncsn_jax.models import get_score_fn  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/cifar10.py.", lock_config=True)
flags.DEFINE_integer("batch_size", 8, "Images per step.")
flags.DEFINE_integer("repeats", 5, "Timed calls after the warm-up call (median reported).")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def median_seconds(fn, repeats):
    fn()  # warm-up: the first call after compilation also pays for allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(_):
    config = FLAGS.config
    size, channels, batch_size = config.data.image_size, config.data.channels, FLAGS.batch_size
    state = train.create_train_state(config, jax.random.key(0))
    batch = jax.random.uniform(jax.random.key(1), (batch_size, size, size, channels))
    rng = jax.random.key(2)

    start = time.perf_counter()
    compiled_step = train.train_step.lower(state, batch, rng).compile()
    train_compile_s = time.perf_counter() - start

    def run_train_step():
        nonlocal state
        state, metrics = compiled_step(state, batch, rng)
        jax.block_until_ready(metrics)

    score = jax.jit(lambda params, x, sigma: get_score_fn(state.model, params)(x, sigma))
    sigma = jnp.full((batch_size,), config.model.sigma_end)
    start = time.perf_counter()
    compiled_score = score.lower(state.params, batch, sigma).compile()
    score_compile_s = time.perf_counter() - start

    train_step_s = median_seconds(run_train_step, FLAGS.repeats)
    score_eval_s = median_seconds(
        lambda: jax.block_until_ready(compiled_score(state.params, batch, sigma)), FLAGS.repeats
    )
    print(json.dumps({
        "benchmark": "train_step",
        "model": config.model.name,
        "image_size": size,
        "ngf": config.model.ngf,
        "dtype": config.model.dtype,
        "batch_size": batch_size,
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "train_compile_s": round(train_compile_s, 3),
        "train_step_s": round(train_step_s, 4),
        "score_compile_s": round(score_compile_s, 3),
        "score_eval_s": round(score_eval_s, 4),
        "images_per_s_train": round(batch_size / train_step_s, 2),
        "repeats": FLAGS.repeats,
    }))


if __name__ == "__main__":
    app.run(main)
