"""Does computing in bfloat16 change what a float32 run learns and samples? MNIST, on the CPU.

    python benchmarks/bfloat16_quality.py --config configs/mnist.py --steps 400 \
        --out benchmarks/results/bfloat16_quality.json

Training: one initialisation (`jax.random.key(0)`) is trained for `--steps` steps of `train.train_step`
(the library's step; the config's optimiser, batch and EMA) in float32 with `--train_seeds` seeds of the
data order and the noise (`config.seed` = seed: batch order; `fold_in(key(seed), step)`: levels and
noise), and in bfloat16 (`model.dtype=bfloat16`, parameters float32) with seed 0's data and noise. Each
run's per-step training loss is averaged over windows of `--window` steps, and each run's EMA parameters
are scored by the DSM loss on the 500 held-out digits (one fixed draw of levels and noise for all runs,
computed in float32).

Sampling: the EMA parameters of float32 seed 0 are sampled in float32 with `--sample_seeds` seeds and in
bfloat16 with seed 0's (or, with `--bf16_sample_seeds`, the first few seeds'), `--num_samples` each, by
`--method` (default cas T=1 at twice technique 4's ε for T=1, 96 evaluations: configs/mnist.py's cheap
setting); the digit FD of each against the training digits is computed as benchmarks/sampler_quality.py
does (the project's digit classifier).

The criteria, fixed before the runs. A bfloat16 run shares its seed's data, levels and noise with the
float32 run of that seed, so it is compared with that run, and the float32 seeds' spread (max − min)
measures how much the choice of seed alone moves the number:
  loss   in every window, |bfloat16 − float32 seed 0| <= the float32 seeds' spread of that window; and the
         same for the test loss of the EMA parameters;
  FD     for each bfloat16 sampling seed, |FD bfloat16 − FD float32 (same seed)| <= the float32 seeds'
         spread of FD.
The report also says whether each bfloat16 number lies inside the float32 seeds' [min, max] (a paired
number sits at the edge of that range whenever its float32 seed does, so this is the weaker test).

Writes `--out` (JSON) after every stage, with the machine's load average and each stage's seconds.
XLA:CPU computes bfloat16 more slowly than float32 (the training step of configs/mnist.py at batch 32:
0.41-0.54 s against 0.30-0.32 s on 2 shared cores), which is what sizes the defaults: on such a machine
the whole run takes about 45 minutes.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import configs  # noqa: E402  (the checkout's configs/, loaded by name or path)
from ncsn_jax import config_checks, losses, train, train_state  # noqa: E402
from ncsn_jax.data import pipeline  # noqa: E402
from ncsn_jax.evaluation import features  # noqa: E402
from ncsn_jax.models import get_model  # noqa: E402
from ncsn_jax.models.score import get_score_fn  # noqa: E402
from ncsn_jax.modes import stats, sweep  # noqa: E402
from ncsn_jax.run import images  # noqa: E402
from ncsn_jax.runtime import data_parallel  # noqa: E402
from ncsn_jax.sampling import methods, sharded  # noqa: E402

configs.define_config_flag("config", None, "An MNIST config, e.g. configs/mnist.py.", lock_config=True)
flags.DEFINE_integer("steps", 400, "Training steps of each run (at least 2).")
flags.DEFINE_integer("window", 50, "Steps per window of the mean training loss.")
flags.DEFINE_integer("train_seeds", 3, "Float32 training seeds (data order and noise).")
flags.DEFINE_integer("num_samples", 1000, "Samples per sampling seed.")
flags.DEFINE_integer("sample_seeds", 3, "Float32 sampling seeds.")
flags.DEFINE_integer("bf16_sample_seeds", 1, "Bfloat16 sampling seeds (the first float32 seeds' keys).")
flags.DEFINE_integer("sample_batch", 250, "Samples per sampler call.")
flags.DEFINE_string("method", "cas", "Sampler method (see ncsn_jax.sampling.methods).")
flags.DEFINE_integer("n_steps_each", 1, "T, sampler steps per level.")
flags.DEFINE_float("step_lr_scale", 2.0, "ε as a multiple of technique 4's for the sampler's T.")
flags.DEFINE_string("out", None, "The JSON report to write.")
flags.mark_flags_as_required(["config", "out"])
FLAGS = flags.FLAGS

INIT_SEED = 0  # every run starts from the parameters of key(0)


def with_dtype(config: ml_collections.ConfigDict, dtype: str) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.dtype = dtype
    return config


def train_run(config: ml_collections.ConfigDict, dtype: str, seed: int,
              mesh) -> tuple[list[float], train_state.TrainState, float]:
    """`FLAGS.steps` (> 1) steps from the shared initialisation: the per-step losses, the state, and the
    seconds of all steps but the first."""
    config = with_dtype(config, dtype)
    config.seed = seed  # the batch order of pipeline.get_dataset
    state = train_state.init_train_state(config, jax.random.key(INIT_SEED), mesh)
    batches = data_parallel.prefetch_to_mesh(pipeline.get_dataset(config, "train", config.training.batch_size), mesh)
    step_key = jax.random.key(seed)
    step_losses = []
    for step in range(FLAGS.steps):
        if step == 1:  # the time of the steps after the first, which compiles
            jax.block_until_ready(state)
            start = time.perf_counter()
        state, metrics = train.train_step(state, next(batches), jax.random.fold_in(step_key, step))
        step_losses.append(metrics["loss"])
    step_losses = [float(loss) for loss in step_losses]
    return step_losses, state, time.perf_counter() - start


def test_loss(config: ml_collections.ConfigDict, ema_params) -> float:
    """The float32 DSM loss of `ema_params` on the held-out digits, one fixed draw of levels and noise."""
    config = with_dtype(config, "float32")
    state = train_state.SamplingState(step=jnp.zeros((), jnp.int32), ema_params=ema_params,
                                      sigmas=train_state.noise_levels(config), model=get_model(config))
    batch_size = config.training.batch_size
    batches = pipeline.get_dataset(config, "test", batch_size, repeat=False, process_index=0, process_count=1)
    key = jax.random.key(12345)
    values = [float(losses.dsm_loss(state.score_fn(), jnp.asarray(batch), state.sigmas,
                                          jax.random.fold_in(key, i)))
              for i, batch in enumerate(batches)]
    return float(np.mean(values))


def windows(losses: list[float]) -> list[float]:
    n = FLAGS.window
    return [float(np.mean(losses[i:i + n])) for i in range(0, len(losses) - n + 1, n)]


def within(value: float, paired: float, others: list[float]) -> dict:
    spread = max(others) - min(others)
    return {"difference_to_paired": value - paired, "float32_spread": spread,
            "within_spread": abs(value - paired) <= spread,
            "inside_float32_range": min(others) <= value <= max(others)}


def main(_):
    config = FLAGS.config
    if FLAGS.steps < 2 or FLAGS.steps < FLAGS.window:
        raise app.UsageError("--steps must be at least 2 and at least one --window")
    if not 1 <= FLAGS.bf16_sample_seeds <= FLAGS.sample_seeds:
        raise app.UsageError("--bf16_sample_seeds must be between 1 and --sample_seeds: each is paired with the "
                             "float32 seed of its index")
    mesh = data_parallel.data_mesh()
    report = {"config": {"dataset": config.data.dataset, "model": config.model.name, "ngf": config.model.ngf,
                         "batch_size": config.training.batch_size, "lr": config.optim.lr,
                         "ema_rate": config.model.ema_rate, "num_scales": config.model.num_scales},
              "steps": FLAGS.steps, "window": FLAGS.window, "devices": [str(d) for d in jax.devices()],
              "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg()}

    def write():
        report["load_average_now"] = os.getloadavg()
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
        with open(FLAGS.out, "w") as file:
            json.dump(report, file, indent=1)

    runs = {}
    checkpoint = None
    for dtype, seed in [("float32", s) for s in range(FLAGS.train_seeds)] + [("bfloat16", 0)]:
        step_losses, state, seconds = train_run(config, dtype, seed, mesh)
        if dtype == "float32" and seed == 0:
            checkpoint = state.ema_params
        name = f"{dtype} seed {seed}"
        runs[name] = {"dtype": dtype, "seed": seed, "seconds": seconds, "steps_per_s": (FLAGS.steps - 1) / seconds,
                      "window_means": windows(step_losses), "final_window": windows(step_losses)[-1],
                      "test_loss_ema": test_loss(config, state.ema_params), "losses": step_losses}
        print(json.dumps({k: v for k, v in runs[name].items() if k != "losses"} | {"run": name}), flush=True)
        report["training"] = {"runs": runs}
        write()

    float32_runs = [run for run in runs.values() if run["dtype"] == "float32"]
    bf16_run, paired_run = runs["bfloat16 seed 0"], runs["float32 seed 0"]
    per_window = [within(value, paired, [run["window_means"][i] for run in float32_runs])
                  for i, (value, paired) in enumerate(zip(bf16_run["window_means"], paired_run["window_means"]))]
    test = within(bf16_run["test_loss_ema"], paired_run["test_loss_ema"],
                  [run["test_loss_ema"] for run in float32_runs])
    report["training"]["criterion"] = {
        "per_window": per_window,
        "every_window_within_spread": all(w["within_spread"] for w in per_window),
        "windows_inside_float32_range": sum(w["inside_float32_range"] for w in per_window),
        "test_loss": test,
    }
    write()

    # Sampling the float32 seed-0 EMA parameters.
    ladder = train_state.noise_levels(config)
    settings = ml_collections.ConfigDict(config.sampling.to_dict())
    settings.method, settings.n_steps_each, settings.batch_size = FLAGS.method, FLAGS.n_steps_each, FLAGS.sample_batch
    settings.step_lr = FLAGS.step_lr_scale * methods.technique4_step_lr(np.asarray(ladder), FLAGS.n_steps_each)
    config_checks.check_sampling(settings, np.asarray(ladder))
    extractor = features.feature_extractor(config)
    start = time.perf_counter()
    statistics = stats.dataset_statistics(config, extractor, config.eval.stats_split, progress_bar=False)
    report["sampling"] = {"method": FLAGS.method, "n_steps_each": FLAGS.n_steps_each, "step_lr": settings.step_lr,
                          "evaluations": methods.score_evaluations(len(ladder), settings),
                          "num_samples": FLAGS.num_samples, "features": extractor.name,
                          "reference": f"{config.data.dataset} {config.eval.stats_split}",
                          "reference_seconds": time.perf_counter() - start, "runs": []}
    image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
    # The first pair first, so that a run stopped early already compares the two.
    order = ([("float32", 0), ("bfloat16", 0)] + [("float32", i) for i in range(1, FLAGS.sample_seeds)]
             + [("bfloat16", i) for i in range(1, FLAGS.bf16_sample_seeds)])
    for dtype, seed in order:
        score_fn = get_score_fn(get_model(with_dtype(config, dtype)), checkpoint)
        rng = jax.random.fold_in(jax.random.key(config.seed), 1000 + seed)  # as benchmarks/sampler_quality.py
        start = time.perf_counter()
        samples = sharded.draw_samples(score_fn, ladder, settings, image_shape, rng, FLAGS.num_samples,
                                       mesh, progress_bar=False)
        seconds = time.perf_counter() - start
        found, logits = extractor.fn(images.to_8bit_levels(samples))
        fd = sweep.quality_metrics(found, logits, statistics, config)["fd"]
        report["sampling"]["runs"].append({"dtype": dtype, "seed": seed, "fd": fd, "seconds": seconds})
        print(json.dumps(report["sampling"]["runs"][-1]), flush=True)
        # Judged on the float32 seeds sampled so far, so that a run stopped early reports what it has.
        fds = {(run["dtype"], run["seed"]): run["fd"] for run in report["sampling"]["runs"]}
        float32_fds = [fd for (dtype, _), fd in fds.items() if dtype == "float32"]
        report["sampling"]["criterion"] = {
            f"bfloat16 seed {seed}": within(fd, fds["float32", seed], float32_fds)
            for (dtype, seed), fd in fds.items() if dtype == "bfloat16"}
        write()
    print(json.dumps({"training": {k: v for k, v in report["training"]["criterion"].items() if k != "per_window"},
                      "sampling": report["sampling"]["criterion"]}), flush=True)


if __name__ == "__main__":
    app.run(main)
