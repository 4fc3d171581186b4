"""The host's ceiling: images/s of the real training loop when the network costs nothing.

    python benchmarks/host_ceiling.py                     # all six paper configs, 1 and 2 cores: ~15 min
    python benchmarks/host_ceiling.py --configs cifar10 --cores 1 --steps 50 --out /tmp/h.json

For each paper config (configs/cifar10.py, celeba, church, bedroom, tower, ffhq) at its per-host batch,
the benchmark runs the training loop itself (`ncsn_jax.modes.train.run`: the pipeline and its decoding
processes, prefetch to the mesh, the per-step keys, the progress bar, the metrics and TensorBoard logs, the
test loss every `eval_freq` steps, the checkpointer's preemption poll), with `train.train_step` and
`train.eval_step` replaced by jitted functions of negligible cost that read every image of the batch (the
sum of each image's first pixel) and return the state with `step + 1`. No network runs
(`snapshot_samples = 0`); the only checkpoint is the one at the end, outside the timed window. The network
is built at `ngf = 8`: its state has the same leaves as the paper's (what the step's dispatch pays for),
only smaller.

The data are real encoded images, made here from the photographs that ship with scikit-learn (random
crops, scales, flips and colour shifts, so that they compress as photographs do), in the form a prepared
copy holds them: CIFAR-10 as TFDS's `cifar10` builder writes it in `array_record` (32×32 PNGs), CelebA
as TFDS's `celeb_a` (178×218 JPEGs), LSUN as the official LMDB (WebP, short side 256), FFHQ as a folder of
256×256 PNGs (the paper's resolution; `--ffhq_size 1024` makes the 1024-px PNGs of the official folder).
Building the TFDS ones needs TensorFlow; nothing is downloaded.

Each measurement runs in a fresh process pinned to `n` cores (`os.sched_setaffinity`), so that the
pipeline starts `n` decoding worker processes (`config.data.decode_processes` left at its default: one per
core the process may use; they inherit the pinning), and the loop's own thread, XLA and the decoders share
those `n` cores as they would share a host's. Per config and core count it measures:

- `loop`: the training loop over `--steps` steps after `--warmup_steps` (and at least the first test
  loss, which starts the test split's decoding workers once a run): steps/s, images/s and the
  CPU-seconds per step between the first and the last timed step call, of the training process (all its
  threads) and of its decoding processes (from /proc);
- `loop_without_decoding`: the same loop fed one decoded batch again and again (the pipeline replaced):
  what the loop itself costs per step (`ms_per_step`), with the batch's host-to-device copy;
- `pipeline`: `pipeline.get_dataset` alone, images/s and CPU-seconds per image;
- at 1 core, `stages`: one thread's CPU milliseconds per image for reading the record, decoding it,
  resizing and cropping, and flipping and converting to float32.

Each loop runs `--repeats` times (3) in its pinned process, and the run of median images/s is kept: on a
shared machine, other work only slows a run, and the 2-core rate, which the projection leans on, moved by
a fifth between two runs of the same code.

The projection to an 8-core host fits Amdahl's law to the loop's images/s at 1 and 2 cores:
serial fraction s = 2·T1/T2 − 1 (clipped to [0, 1]), ceiling = T1 / (s + (1 − s)/8); perfect scaling
from 1 to 2 cores projects 8·T1, no scaling projects T1. A shared machine's load makes wall-clock scaling
noisy, so `ceiling_images_per_s_8_cores_from_cpu_time` also projects from CPU time, which load barely
changes: the training process is serial (at most one step per its CPU-seconds per step) and all of the
work shares 8 cores (at most 8 steps per the total CPU-seconds per step); the ceiling is the lower bound.

The H100's demand is one H100 at 50% of its dense bfloat16 peak (989 TFLOP/s) on the network's model
FLOPs (`ncsn_jax.models.flops`), a training step counted as 3 forward passes:
images/s = 0.5 · 989e12 / (3 · forward FLOP per image).

Writes `--out` (default benchmarks/results/host_ceiling.json): a list with one object per config, and
prints a table.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import itertools
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from unittest import mock

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

CONFIGS = ("cifar10", "celeba", "church", "bedroom", "tower", "ffhq")
H100_BF16_PEAK_FLOPS = 989e12
H100_UTILISATION = 0.5
FORWARD_PASSES_PER_STEP = 3
PROJECTED_CORES = 8
PROJECTION_RULE = ("Amdahl's law fitted to the loop's images/s at 1 and 2 cores: s = clip(2*T1/T2 - 1, 0, 1), "
                   "ceiling = T1 / (s + (1 - s)/8)")
DEMAND_RULE = "0.5 * 989e12 / (3 * forward FLOP per image): one H100 at 50% of its dense bfloat16 peak"
BENCHMARK_NGF = 8  # the state's leaves are the paper network's; only their sizes shrink
LSUN_WEBP_QUALITY = 80
CELEBA_JPEG_QUALITY = 90


def h100_demand_images_per_s(forward_flops_per_image: float) -> float:
    """Training images/s one H100 consumes at 50% of its dense bfloat16 peak (3 forward passes a step)."""
    return H100_UTILISATION * H100_BF16_PEAK_FLOPS / (FORWARD_PASSES_PER_STEP * forward_flops_per_image)


def project_ceiling(images_per_s_1: float, images_per_s_2: float, cores: int = PROJECTED_CORES) -> float:
    """Images/s at `cores` cores by Amdahl's law fitted to the rates at 1 and 2 cores (see the docstring)."""
    serial = min(1.0, max(0.0, 2 * images_per_s_1 / images_per_s_2 - 1))
    return images_per_s_1 / (serial + (1 - serial) / cores)


def project_from_cpu_time(batch_size: int, serial_cpu_s_per_step: float, total_cpu_s_per_step: float,
                          cores: int = PROJECTED_CORES) -> float:
    """Images/s at `cores` cores from CPU time: one step per serial (training-process) CPU-second per step
    at most, and `cores` steps per total CPU-second per step at most (see the docstring)."""
    return batch_size * min(1 / serial_cpu_s_per_step, cores / total_cpu_s_per_step)


def paper_config(name: str, batch_size: int | None = None):
    """configs/<name>.py's config, at `batch_size` images per step if given."""
    import importlib

    config = importlib.import_module(f"configs.{name}").get_config()
    if batch_size is not None:
        config.training.batch_size = batch_size
    return config


def forward_flops_per_image(config) -> float:
    """Model FLOPs of one image's forward pass through the config's network (at its own ngf)."""
    import jax
    import jax.numpy as jnp

    from ncsn_jax.models import flops
    from ncsn_jax.models import get_model

    model = get_model(config)
    size, channels = config.data.image_size, config.data.channels
    x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
    sigma = jax.ShapeDtypeStruct((1,), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x, sigma)
    return flops.count_flops(model.apply, params, x, sigma).total


# ---------------------------------------------------------------------------------------------- the data


def _photographs() -> list[Image.Image]:
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(image) for image in load_sample_images().images]


def natural_images(count: int, width: int, height: int, seed: int = 0) -> Iterator[Image.Image]:
    """`count` RGB images of width × height: random crops of the shipped photographs at random scales,
    flipped and colour-shifted, so that each is different and compresses like a photograph."""
    rng = np.random.default_rng(seed)
    photos = _photographs()
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        scale = rng.uniform(0.35, 1.0) * min(photo.width / width, photo.height / height)
        crop_w, crop_h = max(8, int(width * scale)), max(8, int(height * scale))
        left = rng.integers(0, photo.width - crop_w + 1)
        top = rng.integers(0, photo.height - crop_h + 1)
        image = photo.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = np.asarray(image, np.float32) * rng.uniform(0.8, 1.2, 3) + rng.uniform(-20, 20, 3)
        yield Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _build_tfds(name: str, data_dir: pathlib.Path, split_examples: dict) -> None:
    """Runs TFDS's own builder `name` in array_record format with its download replaced by `split_examples`
    ({split: callable giving (key, example) pairs})."""
    import tensorflow_datasets as tfds

    builder_class = tfds.builder_cls(name)

    def split_generators(self, dl_manager):
        return {split: examples() for split, examples in split_examples.items()}

    with mock.patch.object(builder_class, "_split_generators", split_generators):
        tfds.builder(name, data_dir=str(data_dir)).download_and_prepare(file_format="array_record")


def make_cifar10(data_dir: pathlib.Path, num_train: int, num_test: int, size: int = 32) -> dict:
    def examples(split, count, seed):
        def generate():
            for i, image in enumerate(natural_images(count, size, size, seed)):
                yield i, {"id": f"{split}_{i:05d}", "image": np.asarray(image), "label": i % 10}
        return generate

    _build_tfds("cifar10", data_dir, {"train": examples("train", num_train, 1), "test": examples("test", num_test, 2)})
    return {"tfds_data_dir": str(data_dir)}


def make_celeba(data_dir: pathlib.Path, num_train: int, num_test: int) -> dict:
    from tensorflow_datasets.datasets.celeb_a import celeb_a_dataset_builder as celeb_a

    def examples(count, seed):
        def generate():
            for i, image in enumerate(natural_images(count, 178, 218, seed)):
                yield f"{seed}_{i:06d}", {
                    # the aligned CelebA files are JPEGs, which TFDS stores as they are
                    "image": io.BytesIO(_encoded(image, "JPEG", quality=CELEBA_JPEG_QUALITY)),
                    "landmarks": {name: 0 for name in celeb_a.LANDMARK_HEADINGS},
                    "attributes": {name: False for name in celeb_a.ATTR_HEADINGS},
                    "identity": {name: 0 for name in celeb_a.IDENTITY_HEADINGS},
                }
        return generate

    _build_tfds("celeb_a", data_dir, {"train": examples(num_train, 1), "validation": examples(num_test, 2),
                                      "test": examples(num_test, 3)})
    return {"tfds_data_dir": str(data_dir)}


def make_lsun(folder: pathlib.Path, category: str, num_train: int, num_test: int) -> dict:
    """The official LMDB layout: `<category>_train_lmdb` and `_val_lmdb`, keys of hex ids, WebP values."""
    import lmdb

    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count, seed in (("train", num_train, 1), ("val", num_test, 2)):
        env = lmdb.open(str(folder / f"{category}_{split}_lmdb"), map_size=1 << 32)
        with env.begin(write=True) as txn:
            for i in range(count):
                long_side = int(256 * rng.uniform(1.0, 1.6))  # LSUN: short side 256, various aspects
                width, height = (long_side, 256) if rng.random() < 0.7 else (256, long_side)
                image = next(natural_images(1, width, height, seed=seed * 100_000 + i))
                txn.put(f"{rng.integers(1 << 62):040x}".encode(), _encoded(image, "WEBP", quality=LSUN_WEBP_QUALITY))
        env.close()
    return {"path": str(folder)}


def make_ffhq(folder: pathlib.Path, count: int, size: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(natural_images(count, size, size, seed=4)):
        image.save(folder / f"{i:05d}.png")
    return {"path": str(folder)}


def make_data(name: str, config, root: pathlib.Path, num_images: int, ffhq_size: int = 256) -> dict:
    """Writes `name`'s data under `root` (enough for a train and a test batch) and returns the
    `config.data` fields that point the pipeline at it."""
    batch = config.training.batch_size
    num_test = max(batch, num_images // 4)
    num_train = max(batch, num_images - num_test)
    dataset = config.data.dataset
    if dataset == "cifar10":
        return make_cifar10(root / "tfds", num_train, num_test)
    if dataset == "celeba":
        return make_celeba(root / "tfds", num_train, num_test)
    if dataset in ("church_outdoor", "bedroom", "tower"):
        return make_lsun(root, dataset, num_train, num_test)
    if dataset == "ffhq":  # the pipeline's 90/10 split: enough images for a test batch
        return make_ffhq(root / "ffhq", max(num_images, 10 * batch + 10), ffhq_size)
    raise ValueError(f"no data maker for dataset {dataset!r}")


# ----------------------------------------------------------------------------- one measurement (a child)


def _child_pids() -> list[int]:
    """This process's live child processes (the decoding workers), from /proc."""
    tasks = pathlib.Path(f"/proc/{os.getpid()}/task").iterdir()
    return [int(pid) for task in tasks for pid in (task / "children").read_text().split()]


def _cpu_seconds() -> np.ndarray:
    """CPU-seconds so far of [this process (all its threads), its live child processes], from /proc:
    `resource`'s RUSAGE_CHILDREN counts only children that have ended."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = 0.0
    for pid in _child_pids():
        with contextlib.suppress(OSError):  # a child that has just ended
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            children += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return np.array([usage.ru_utime + usage.ru_stime, children])


@contextlib.contextmanager
def cheap_steps(marks: list, losses: list, window: tuple[int, int]):
    """Replaces the training and evaluation steps by jitted ones of negligible cost; appends
    (perf_counter, CPU seconds, child processes) to `marks` at each training step call (the CPU seconds and
    the children only at the calls numbered `window`: reading /proc costs milliseconds) and its loss (the sum of the
    batch's first pixels, a fingerprint of the batch) to `losses`."""
    import jax
    import jax.numpy as jnp

    from ncsn_jax import train

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state, batch, rng):
        loss = jnp.sum(batch[:, 0, 0, 0])  # reads every image of the batch, so the batch must arrive
        return state.replace(step=state.step + 1), {"loss": loss, "grad_norm": loss}

    @jax.jit
    def eval_step(state, batch, rng):
        return {"loss": jnp.mean(batch[:, 0, 0, 0])}

    def timed_train_step(state, batch, rng):
        at_edge = len(marks) in window
        marks.append((time.perf_counter(), _cpu_seconds() if at_edge else None, len(_child_pids()) if at_edge else None))
        if len(marks) == 1:  # compile the test loss now, not inside the timed window
            jax.block_until_ready(eval_step(state, batch, rng))
        state, metrics = train_step(state, batch, rng)
        losses.append(metrics["loss"])
        return state, metrics

    with mock.patch.object(train, "train_step", timed_train_step), mock.patch.object(train, "eval_step", eval_step):
        yield


def run_loop(config, warmup_steps: int, steps: int, fixed_batch=None) -> dict:
    """Runs the training loop (`modes.train.run`) with the cheap steps over warmup + steps (+1) steps; times
    the last `steps`. The warmup lasts at least to the first test loss, which starts the test split's decoding
    workers, once a run: the window measures the steady state. With `fixed_batch`, every batch (train and
    test) is that array instead of the pipeline's."""
    from ncsn_jax.data import pipeline
    from ncsn_jax.modes import Options, train

    training = config.training
    warmup_steps = max(warmup_steps, training.eval_freq)
    training.n_iters = warmup_steps + steps + 1
    training.snapshot_freq = 10 * training.n_iters  # the end's checkpoint only, after the timed window
    training.snapshot_samples = 0
    marks: list = []
    losses: list = []
    feed = contextlib.nullcontext()
    if fixed_batch is not None:
        feed = mock.patch.object(pipeline, "get_dataset", lambda *args, **kwargs: itertools.repeat(fixed_batch))
    with tempfile.TemporaryDirectory() as workdir, cheap_steps(marks, losses, (warmup_steps, warmup_steps + steps)), feed:
        train.run(config, workdir, Options("train"))
    (wall_0, cpu_0, _), (wall_1, cpu_1, children) = marks[warmup_steps], marks[warmup_steps + steps]
    seconds = wall_1 - wall_0
    evals = sum(1 for s in range(warmup_steps + 1, warmup_steps + steps + 1) if s % training.eval_freq == 0)
    logs = sum(1 for s in range(warmup_steps + 1, warmup_steps + steps + 1) if s % training.log_freq == 0)
    return {
        "warmup_steps": warmup_steps,
        "steps": steps,
        "step_calls": len(marks),
        "distinct_batches": len({float(loss) for loss in losses}),  # by their fingerprints
        "test_losses_in_window": evals,
        "logs_in_window": logs,
        "steps_per_s": steps / seconds,
        "images_per_s": steps * training.batch_size / seconds,
        "ms_per_step": 1e3 * seconds / steps,
        "cpu_s_per_step": float(sum(cpu_1 - cpu_0)) / steps,  # the training process and its decoding workers
        "training_process_cpu_s_per_step": float(cpu_1[0] - cpu_0[0]) / steps,
        "decoding_processes_cpu_s_per_step": float(cpu_1[1] - cpu_0[1]) / steps,
        "cores_busy": float(sum(cpu_1 - cpu_0)) / seconds,  # CPU-seconds per second: how many cores it kept busy
        "child_processes": children,  # the decoding workers at the window's end: the train and test splits'
    }


def run_pipeline(config, batches: int) -> dict:
    from ncsn_jax.data import pipeline

    batch_size = config.training.batch_size
    iterator = pipeline.get_dataset(config, "train", batch_size)
    for _ in range(3):
        next(iterator)
    wall_0, cpu_0 = time.perf_counter(), _cpu_seconds()
    for _ in range(batches):
        next(iterator)
    seconds, cpu = time.perf_counter() - wall_0, float(sum(_cpu_seconds() - cpu_0))
    iterator.close()
    return {"images_per_s": batches * batch_size / seconds, "cpu_ms_per_image": 1e3 * cpu / (batches * batch_size)}


def stage_costs(config, count: int = 64) -> dict:
    """One thread's CPU milliseconds per image (`time.thread_time`, unaffected by other processes) for each
    stage of reading a training image as the pipeline reads it."""
    from ncsn_jax.data import sources

    data = config.data
    fit = functools.partial(sources.resize_and_crop, size=data.image_size, channels=data.channels,
                            pre_crop=140 if data.dataset == "celeba" else None)
    timings = {"read_ms": 0.0, "decode_ms": 0.0, "resize_crop_ms": 0.0, "flip_to_float_ms": 0.0}
    if data.dataset in ("cifar10", "celeba"):
        import tensorflow_datasets as tfds

        examples = tfds.builder(sources.TFDS_NAMES[data.dataset], data_dir=data.tfds_data_dir).as_data_source("train")
        count = min(count, len(examples))
        raw = examples.data_source  # the records before TFDS decodes them
        for i in range(count):
            start = time.thread_time()
            record = raw[i]
            read = time.thread_time()
            image = Image.open(io.BytesIO(sources.encoded_image(record)))  # the image alone, as the pipeline
            image.load()
            decoded = time.thread_time()
            timings["read_ms"] += read - start
            timings["decode_ms"] += decoded - read
            _fit_and_convert(fit, image, timings)
    else:
        if data.dataset == "ffhq":
            files = sorted(pathlib.Path(data.path).rglob("*.png"))[:count]
            read_bytes = [lambda f=f: f.read_bytes() for f in files]
        else:
            import lmdb

            env = lmdb.open(str(pathlib.Path(data.path) / f"{data.dataset}_train_lmdb"), readonly=True, lock=False)
            with env.begin() as txn:
                keys = list(itertools.islice(txn.cursor().iternext(values=False), count))

            def get(key):
                with env.begin() as txn:
                    return txn.get(key)
            read_bytes = [functools.partial(get, key) for key in keys]
        count = len(read_bytes)
        for read in read_bytes:
            start = time.thread_time()
            encoded = read()
            got = time.thread_time()
            image = Image.open(io.BytesIO(encoded))
            image.load()
            decoded = time.thread_time()
            timings["read_ms"] += got - start
            timings["decode_ms"] += decoded - got
            _fit_and_convert(fit, image, timings)
    return {key: 1e3 * value / count for key, value in timings.items()}


def _fit_and_convert(fit, image, timings: dict) -> None:
    start = time.thread_time()
    fitted = fit(image)
    fitted_at = time.thread_time()
    np.ascontiguousarray(fitted[:, ::-1]).astype(np.float32) / np.float32(255)
    timings["resize_crop_ms"] += fitted_at - start
    timings["flip_to_float_ms"] += time.thread_time() - fitted_at


def measure(name: str, data_fields: dict, warmup_steps: int, steps: int, pipeline_batches: int,
            details: bool, batch_size: int | None = None, repeats: int = 1) -> dict:
    """One config on the cores this process may use (run it in a process pinned to them): the loop `repeats`
    times, keeping the run of median images/s (the lower one of the middle two for an even count), since a
    shared machine's other work only ever slows a run; with `details`, also the loop without decoding and
    the stages' costs."""
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    config = paper_config(name, batch_size)
    cores = len(os.sched_getaffinity(0))
    result = {"cores": cores, "decoding_processes": min(32, cores), "batch_size": config.training.batch_size,
              "load_average_before": os.getloadavg()[0]}
    if details:  # here, not in the driver, which then never starts JAX (accelerator.py holds the device)
        result["forward_flops_per_image"] = forward_flops_per_image(config)
    config.model.ngf = BENCHMARK_NGF
    for field, value in data_fields.items():
        config.data[field] = value
    result["pipeline"] = run_pipeline(config, pipeline_batches)
    runs = sorted((run_loop(config, warmup_steps, steps) for _ in range(repeats)),
                  key=lambda run: run["images_per_s"])
    result["loop"] = runs[(len(runs) - 1) // 2]
    result["loop_images_per_s_repeats"] = [run["images_per_s"] for run in runs]
    if details:
        from ncsn_jax.data import pipeline

        batch = next(pipeline.get_dataset(config, "train", config.training.batch_size))
        result["loop_without_decoding"] = run_loop(config, warmup_steps, steps, fixed_batch=batch)
        result["stages"] = stage_costs(config)
    return result


def measure_pinned(name: str, data_fields: dict, cores: int, warmup_steps: int, steps: int,
                   pipeline_batches: int, batch_size: int | None, details: bool, log_file,
                   compilation_cache: pathlib.Path, repeats: int = 1) -> dict:
    """`measure` in a fresh Python process pinned to this process's first `cores` cores."""
    allowed = sorted(os.sched_getaffinity(0))
    if cores > len(allowed):
        raise ValueError(f"{cores} cores asked for; this process may use {len(allowed)}")
    pinned = set(allowed[:cores])
    # A small interpreter pins itself and becomes the measuring process (exec keeps the affinity), so that
    # every thread it starts is pinned; this process has JAX's threads and must not fork into a pinning.
    pin_then_exec = (f"import os, sys; os.sched_setaffinity(0, {pinned}); "
                     "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")
    args = [sys.executable, "-c", pin_then_exec, str(pathlib.Path(__file__).resolve()), "--child", json.dumps({
        "name": name, "data_fields": data_fields, "warmup_steps": warmup_steps, "steps": steps,
        "pipeline_batches": pipeline_batches, "details": details, "batch_size": batch_size, "repeats": repeats})]
    run = subprocess.run(args, cwd=REPO, stdout=subprocess.PIPE, stderr=log_file, text=True, check=False,
                         env={**os.environ, "JAX_COMPILATION_CACHE_DIR": str(compilation_cache)})
    if run.returncode:
        raise RuntimeError(f"the measurement of {name} on {cores} core(s) failed (exit {run.returncode}); "
                           f"see {getattr(log_file, 'name', 'its log')}")
    return json.loads(run.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- the driver


def host_ceiling(names: Sequence[str], cores: Sequence[int] = (1, 2), steps: int = 100, warmup_steps: int = 10,
                 pipeline_batches: int = 20, num_images: int = 512, ffhq_size: int = 256,
                 batch_size: int | None = None, data_root: pathlib.Path | None = None,
                 log_path: pathlib.Path | None = None, on_row: Callable[[dict], None] | None = None,
                 repeats: int = 1) -> list[dict]:
    """Measures each config in `names` at each core count; returns the rows of host_ceiling.json.

    Args:
      names: config modules under configs/ (e.g. "cifar10").
      cores: core counts to measure; the projection needs 1 and 2.
      steps, warmup_steps: timed and untimed loop steps per measurement.
      pipeline_batches: timed batches of the pipeline alone.
      num_images: images made per dataset (train and test together).
      ffhq_size: side of the FFHQ PNGs (256: the paper's; 1024: the official folder's).
      batch_size: images per step instead of the config's (tests: a tiny batch).
      data_root: where to write the data (default: a temporary folder, deleted after).
      log_path: where the measuring processes' stderr goes (default: discarded).
      on_row: called with each config's row as soon as it is measured.
      repeats: loop runs per core count; the median run is kept (see `measure`).

    Returns:
      One dict per config: its demand, per core count the measurements of `measure`, and the projection.
    """
    with contextlib.ExitStack() as stack:
        root = data_root or pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory()))
        log = stack.enter_context(open(log_path or os.devnull, "a", encoding="utf-8"))
        # The state's initialisation compiles for tens of seconds at 256 px: each process after the first
        # loads it from this cache (a test run's own cache is used where set).
        cache = pathlib.Path(os.environ.get("JAX_COMPILATION_CACHE_DIR") or root / "xla_cache")
        rows = []
        for name in names:
            config = paper_config(name, batch_size)
            data_fields = make_data(name, config, root / name, num_images, ffhq_size)
            row = {"config": f"configs/{name}.py", "dataset": config.data.dataset,
                   "image_size": config.data.image_size, "batch_size": config.training.batch_size}
            if config.data.dataset == "ffhq":
                row["ffhq_png_size"] = ffhq_size
            for n in cores:
                row[f"cores_{n}"] = measure_pinned(name, data_fields, n, warmup_steps, steps, pipeline_batches,
                                                   batch_size, n == min(cores), log, cache, repeats)
            flops = row[f"cores_{min(cores)}"]["forward_flops_per_image"]
            demand = h100_demand_images_per_s(flops)
            row.update({
                "forward_gflops_per_image": flops / 1e9,
                "h100_demand_images_per_s": demand,
                "h100_demand_steps_per_s": demand / config.training.batch_size,
                "demand_rule": DEMAND_RULE,
            })
            _summarise(row, cores)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def _summarise(row: dict, cores: Sequence[int]) -> None:
    for n in cores:
        loop = row[f"cores_{n}"]["loop"]
        row[f"images_per_s_{n}_cores"] = loop["images_per_s"]
        row[f"cpu_s_per_step_{n}_cores"] = loop["cpu_s_per_step"]
    first = row[f"cores_{min(cores)}"]
    row["loop_host_ms_per_step"] = first["loop_without_decoding"]["ms_per_step"]
    row["loop_host_cpu_ms_per_step"] = 1e3 * first["loop_without_decoding"]["cpu_s_per_step"]
    if 1 in cores and 2 in cores:
        one, two = row["images_per_s_1_cores"], row["images_per_s_2_cores"]
        ceiling = project_ceiling(one, two)
        row["ceiling_images_per_s_8_cores"] = ceiling
        row["ceiling_over_demand"] = ceiling / row["h100_demand_images_per_s"]
        row["at_least_twice_demand"] = ceiling >= 2 * row["h100_demand_images_per_s"]
        row["projection_rule"] = PROJECTION_RULE
        loop = row[f"cores_{max(cores)}"]["loop"]
        row["ceiling_images_per_s_8_cores_from_cpu_time"] = project_from_cpu_time(
            row["batch_size"], loop["training_process_cpu_s_per_step"], loop["cpu_s_per_step"])


def format_row(row: dict) -> str:
    cells = [row["config"], f"{row['h100_demand_images_per_s']:,.0f}"]
    for key in ("images_per_s_1_cores", "images_per_s_2_cores"):
        cells.append(f"{row[key]:,.0f}" if key in row else "-")
    cells.append(f"{row['loop_host_ms_per_step']:.2f}")
    if "ceiling_images_per_s_8_cores" in row:
        cells += [f"{row['ceiling_images_per_s_8_cores']:,.0f}", f"{row['ceiling_over_demand']:.2f}"]
    return " | ".join(cells)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated config names")
    parser.add_argument("--cores", default="1,2", help="comma-separated core counts")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup_steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="loop runs per core count; the median is kept")
    parser.add_argument("--pipeline_batches", type=int, default=20)
    parser.add_argument("--num_images", type=int, default=512)
    parser.add_argument("--ffhq_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=None, help="instead of the configs' (tests)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "host_ceiling.json"))
    parser.add_argument("--log", default=None, help="file for the measuring processes' stderr")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        from ncsn_jax.runtime import cpu_runtime

        cpu_runtime.exec_with_mimalloc()  # as main.py starts a run
        spec = json.loads(args.child)
        print(json.dumps(measure(**spec)))
        return
    print("config | H100 demand img/s | img/s 1 core | img/s 2 cores | loop ms/step | 8-core ceiling | ceiling/demand")
    rows = host_ceiling(args.configs.split(","), [int(n) for n in args.cores.split(",")], args.steps,
                        args.warmup_steps, args.pipeline_batches, args.num_images, args.ffhq_size,
                        args.batch_size, log_path=pathlib.Path(args.log) if args.log else None,
                        on_row=lambda row: print(format_row(row), flush=True), repeats=args.repeats)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
