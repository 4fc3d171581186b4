"""The accelerator benchmark: training throughput, MFU and sampling cost of the CIFAR-10 network.

    python benchmarks/accelerator.py                      # a GPU or TPU machine: about 3 minutes
    python benchmarks/accelerator.py --config configs/tiny.py --batch_per_device 2 --steps 2 \
        --sampler_levels 2                                 # a quick check on CPU (what the tests run)

Needs JAX, Flax, Optax and ml_collections (no data, no network); the host ceiling below also builds its
data with TensorFlow Datasets for cifar10 and celeba, and says it is unavailable where they are not
installed. Prints one JSON line:

- for each compute dtype (float32, bfloat16; parameters stay float32): the compile time, the median
  training step time and training images/s in all and per device, at `--batch_per_device` images per
  device (default: the config's batch, the paper's batch on one device) with the batch sharded over
  every device as in training; `peak_device_bytes`, the device's peak memory in use so far
  (`memory_stats()['peak_bytes_in_use']`: float32 is measured first, so bfloat16's is the larger of the
  two; None on a backend without it, such as the CPU), and `step_temp_bytes`, the compiled step's
  temporary buffers (XLA's memory analysis, on every backend);
- `train_tflops_per_s_per_device` and `mfu`: model FLOPs per second against the device's peak, with the
  model FLOPs counted from the network's jaxpr (convolutions and matrix products, 2 per
  multiply-accumulate; a training step counted as 3 forward passes), and the peak from `PEAK_TFLOPS`
  below (dense, per JAX device; float32 matmuls run as TF32 on NVIDIA GPUs unless
  `--jax_default_matmul_precision=highest`, so float32 is measured against the TF32 peak there);
- the sampler's score evaluations/s (one image through the network = one evaluation), from an
  annealed Langevin run over `--sampler_levels` levels at `sampling.n_steps_each` steps each, at
  `--sampling_batch_per_device` images per device, in the fastest dtype;
- `hours_for_50k_samples`: 50,000 samples at the config's L·T + 1 evaluations each (1,161 for
  CIFAR-10), on all the devices of this machine;
- `host_loop`: what this host's training loop can feed, whatever the network: the real loop with the real
  pipeline on made-up encoded images at the config's batch, with the network's step replaced by one of
  negligible cost (`benchmarks/host_ceiling.py`), on all of this process's cores: images/s, steps/s,
  CPU-seconds per step, and the loop's own milliseconds per step without decoding. Compare its images/s
  with `training`'s: the smaller one is what a user will see. `--loop_steps 0` skips it.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

import host_ceiling  # noqa: E402  (benchmarks/host_ceiling.py and timing.py, beside this script)
import timing  # noqa: E402
import configs  # noqa: E402  (the checkout's configs/, loaded by name or path)
from ncsn_jax import train  # noqa: E402
from ncsn_jax.runtime import data_parallel  # noqa: E402
from ncsn_jax.sampling import langevin  # noqa: E402

configs.define_config_flag("config", "cifar10", "A config's name or file, e.g. configs/tiny.py.", lock_config=False)
flags.DEFINE_integer("batch_per_device", None, "Training images per device per step (default: the config's "
                     "training.batch_size, the paper's batch on one device).")
flags.DEFINE_integer("sampling_batch_per_device", 100, "Sampler images per device.")
flags.DEFINE_integer("steps", 10, "Timed training steps per dtype (median reported), after two untimed.")
flags.DEFINE_integer("sampler_levels", 10, "Noise levels of the timed sampler run.")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes to measure.")
flags.DEFINE_integer("loop_steps", 100, "Timed steps of the host-ceiling loop (0: skip it).")
FLAGS = flags.FLAGS

# Dense peak TFLOP/s per JAX device by device kind (a substring of `device_kind`), from the vendors'
# data sheets: (float32 as the backend runs float32 matmuls, bfloat16). NVIDIA: TF32 tensor cores.
# TPU v2/v3 devices are single cores (half a chip); v4 and later devices are whole chips.
PEAK_TFLOPS = {
    "H200": (494.7, 989.4),
    "H100": (494.7, 989.4),
    "A100": (156.0, 312.0),
    "L4": (60.0, 121.0),
    "V100": (15.7, 125.0),  # no TF32: float32 on the CUDA cores; "bfloat16" runs at the FP16 rate at best
    "TPU v6": (918.0, 918.0),
    "TPU v5p": (459.0, 459.0),
    "TPU v5 lite": (197.0, 197.0),
    "TPU v5e": (197.0, 197.0),
    "TPU v4": (275.0, 275.0),
    "TPU v3": (61.5, 61.5),
    "TPU v2": (22.5, 22.5),
}


def peak_tflops(device_kind: str, dtype: str):
    for kind, peaks in PEAK_TFLOPS.items():
        if kind.lower() in device_kind.lower():
            return peaks[0 if dtype == "float32" else 1]
    return None  # a CPU, or a device missing from the table: no MFU


def measure_training(config, mesh, batch_per_device):
    devices = mesh.devices.size
    batch_size = batch_per_device * devices
    state, batch, rng = timing.training_inputs(config, mesh, batch_size)
    compiled, compile_s = timing.compile_seconds(train.train_step, state, batch, rng)
    step_s, state = timing.train_step_seconds(compiled, state, batch, rng, FLAGS.steps, warmup=2)
    memory = compiled.memory_analysis()
    return state, {
        "compile_s": round(compile_s, 2),
        "step_s": round(step_s, 5),
        "images_per_s": round(batch_size / step_s, 1),
        "images_per_s_per_device": round(batch_size / step_s / devices, 1),
        "peak_device_bytes": peak_device_bytes(),
        "step_temp_bytes": None if memory is None else memory.temp_size_in_bytes,
    }


def peak_device_bytes():
    """The first device's peak memory in use since the process started; None where the backend does not
    report it (the CPU)."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def measure_host_loop(config_path, batch_size):
    """`host_ceiling`'s measurement of this config on all of this process's cores (see the docstring)."""
    name = os.path.splitext(os.path.basename(config_path))[0]
    cores = len(os.sched_getaffinity(0))
    try:
        (row,) = host_ceiling.host_ceiling([name], cores=(cores,), steps=FLAGS.loop_steps, warmup_steps=10,
                                           batch_size=batch_size)
    except ImportError as error:  # TFDS or TensorFlow missing: cifar10 and celeba cannot be made
        return {"unavailable": f"not measured: {error}"}
    measured = row[f"cores_{cores}"]
    loop = measured["loop"]
    return {
        "cores": cores,
        "batch_size": batch_size,
        "images_per_s": round(loop["images_per_s"], 1),
        "steps_per_s": round(loop["steps_per_s"], 2),
        "cpu_s_per_step": round(loop["cpu_s_per_step"], 5),
        "loop_ms_per_step_without_decoding": round(measured["loop_without_decoding"]["ms_per_step"], 3),
        "h100_demand_images_per_s": round(row["h100_demand_images_per_s"], 1),
    }


def measure_sampler(state, config, mesh):
    devices = mesh.devices.size
    batch = FLAGS.sampling_batch_per_device * devices
    size, channels = config.data.image_size, config.data.channels
    x_init = jax.device_put(jax.random.uniform(jax.random.key(3), (batch, size, size, channels)),
                            data_parallel.batch_sharding(mesh))
    sigmas = state.sigmas
    levels = sigmas[:: max(1, sigmas.shape[0] // FLAGS.sampler_levels)][: FLAGS.sampler_levels]
    n_steps = config.sampling.n_steps_each

    def run():
        out = langevin.annealed_langevin_dynamics(
            state.score_fn(), jax.random.key(4), x_init, levels, n_steps_each=n_steps,
            step_lr=config.sampling.step_lr, denoise=True,
        )
        jax.block_until_ready(out.samples)

    seconds = timing.median_seconds(run, 1 if jax.default_backend() == "cpu" else 3)
    return batch * (levels.shape[0] * n_steps + 1) / seconds


def main(_):
    config = FLAGS.config
    batch_per_device = FLAGS.batch_per_device or config.training.batch_size
    # First, in processes of its own, while this one has not opened the device (a TPU admits one process).
    host_loop = None
    if FLAGS.loop_steps:
        host_loop = measure_host_loop(FLAGS["config"].config_filename, config.training.batch_size)
    mesh = data_parallel.data_mesh()
    devices = mesh.devices.size
    device_kind = jax.devices()[0].device_kind
    result = {
        "benchmark": "accelerator",
        "backend": jax.default_backend(),
        "device_kind": device_kind,
        "device_count": devices,
        "jax": jax.__version__,
        "model": config.model.name,
        "image_size": config.data.image_size,
        "ngf": config.model.ngf,
        "batch_per_device": batch_per_device,
        "training": {},
    }
    forward_flops = host_ceiling.forward_flops_per_image(config)  # the same in every compute dtype
    result["forward_gflops_per_image"] = round(forward_flops / 1e9, 3)
    fastest = None
    for dtype in FLAGS.dtypes:
        config.model.dtype = dtype
        state, measured = measure_training(config, mesh, batch_per_device)
        tflops = 3 * forward_flops * measured["images_per_s_per_device"] / 1e12
        peak = peak_tflops(device_kind, dtype)
        measured["train_tflops_per_s_per_device"] = round(tflops, 3)
        measured["peak_tflops_per_device"] = peak
        measured["mfu"] = round(tflops / peak, 4) if peak else None
        result["training"][dtype] = measured
        if fastest is None or measured["step_s"] < fastest[1]["step_s"]:
            fastest = (dtype, measured, state)
        del state
    dtype, _, state = fastest
    config.model.dtype = dtype
    evals_per_s = measure_sampler(state, config, mesh)
    evals_per_sample = config.model.num_scales * config.sampling.n_steps_each + 1
    result["sampler"] = {
        "dtype": dtype,
        "batch_per_device": FLAGS.sampling_batch_per_device,
        "score_evals_per_s": round(evals_per_s, 1),
        "score_evals_per_sample": evals_per_sample,
        "hours_for_50k_samples": round(50_000 * evals_per_sample / evals_per_s / 3600, 3),
    }
    result["host_loop"] = host_loop
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
