"""Training and sampling speed of a config's network on every device present, and peak memory.

    python benchmarks/train_step.py --config configs/cifar10.py --batch_size 8

Prints one JSON line: compile times; the median of `--repeats` timed calls (after one warm-up call) of
the jitted training step and of one score evaluation (forward pass), with the global batch sharded over
all devices as in training; training throughput in images/s (in all and per device); sampler throughput
in score evaluations per second (one image through the network = one evaluation), timed over a short
annealed Langevin run; and peak memory (the accelerator's peak bytes in use, or the process's peak
resident memory on CPU); and the minor page faults per training step (fresh pages the kernel had to
supply: near 0 with the allocator main.py preloads, see ncsn_jax/runtime/cpu_runtime.py; `NCSN_JAX_ALLOCATOR=system`
measures glibc's malloc instead). Config fields can be overridden as in main.py, e.g.
`--config.model.dtype=bfloat16`.
"""
import json
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import configs  # noqa: E402  (the checkout's configs/, loaded by name or path)
from ncsn_jax.runtime import cpu_runtime  # noqa: E402

cpu_runtime.exec_with_mimalloc()  # as main.py does; NCSN_JAX_ALLOCATOR=system measures glibc's malloc

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402

import timing  # noqa: E402  (benchmarks/timing.py, beside this script: not a package)
from ncsn_jax import train  # noqa: E402
from ncsn_jax.runtime import data_parallel  # noqa: E402
from ncsn_jax.sampling import langevin  # noqa: E402

configs.define_config_flag("config", None, "Config file, e.g. configs/cifar10.py.", lock_config=True)
flags.DEFINE_integer("batch_size", 8, "Global images per step (divisible by the device count).")
flags.DEFINE_integer("repeats", 5, "Timed calls after the warm-up call (median reported).")
flags.DEFINE_integer("sampler_levels", 4, "Noise levels of the timed sampler run (T steps each).")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def peak_memory_bytes():
    stats = [device.memory_stats() or {} for device in jax.local_devices()]
    peaks = [s["peak_bytes_in_use"] for s in stats if "peak_bytes_in_use" in s]
    if peaks:
        return {"peak_device_bytes": max(peaks)}
    return {"peak_host_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main(_):
    config = FLAGS.config
    size, batch_size = config.data.image_size, FLAGS.batch_size
    mesh = data_parallel.data_mesh()
    data_parallel.per_host_batch_size(batch_size, mesh, "batch_size")
    state, batch, rng = timing.training_inputs(config, mesh, batch_size)
    compiled_step, train_compile_s = timing.compile_seconds(train.train_step, state, batch, rng)

    score = jax.jit(lambda score_fn, x, sigma: score_fn(x, sigma))
    sigma = jax.device_put(jnp.full((batch_size,), config.model.sigma_end), data_parallel.batch_sharding(mesh))
    compiled_score, score_compile_s = timing.compile_seconds(score, state.score_fn(), batch, sigma)

    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    train_step_s, state = timing.train_step_seconds(compiled_step, state, batch, rng, FLAGS.repeats)
    faults_per_step = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before) / (FLAGS.repeats + 1)
    score_eval_s = timing.median_seconds(
        lambda: jax.block_until_ready(compiled_score(state.score_fn(), batch, sigma)), FLAGS.repeats
    )

    levels = state.sigmas[:: max(1, state.sigmas.shape[0] // FLAGS.sampler_levels)][: FLAGS.sampler_levels]
    n_steps = config.sampling.n_steps_each

    def run_sampler():
        out = langevin.annealed_langevin_dynamics(
            state.score_fn(), rng, batch, levels, n_steps_each=n_steps, step_lr=config.sampling.step_lr,
            denoise=True,
        )
        jax.block_until_ready(out.samples)

    sampler_s = timing.median_seconds(run_sampler, max(1, FLAGS.repeats // 2))
    evaluations = batch_size * (levels.shape[0] * n_steps + 1)
    devices = jax.device_count()
    print(json.dumps({
        "benchmark": "train_step",
        "model": config.model.name,
        "image_size": size,
        "ngf": config.model.ngf,
        "dtype": config.model.dtype,
        "batch_size": batch_size,
        "backend": jax.default_backend(),
        "device_count": devices,
        "device_kind": jax.devices()[0].device_kind,
        "train_compile_s": round(train_compile_s, 3),
        "train_step_s": round(train_step_s, 4),
        "score_compile_s": round(score_compile_s, 3),
        "score_eval_s": round(score_eval_s, 4),
        "train_minor_page_faults_per_step": round(faults_per_step),
        "allocator": os.environ.get(cpu_runtime.ALLOCATOR_VARIABLE) or "system",
        "train_images_per_s": round(batch_size / train_step_s, 2),
        "train_images_per_s_per_device": round(batch_size / train_step_s / devices, 2),
        "sampler_score_evals_per_s": round(evaluations / sampler_s, 2),
        "repeats": FLAGS.repeats,
        **peak_memory_bytes(),
    }))


if __name__ == "__main__":
    app.run(main)
