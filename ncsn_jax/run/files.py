"""A run's workdir: the names of the files in it, and their reading and writing, local or on object storage.

A workdir is a path on the local disk or a URL of object storage (`gs://bucket/run` on a TPU VM,
`s3://...`). Every file the program keeps under it is named here, and every read and write of one goes
through here, by `etils.epath` (which Orbax uses for the checkpoints too): on a local disk through the
operating system, on object storage through `gcsfs` / `s3fs` (the `gcs` and `s3` extras) or, where
TensorFlow is installed, `tf.io.gfile` (`EPATH_USE_TF=false` chooses fsspec anyway).

Writes are whole. A kill during one leaves the old file or the new one, never part of one: a local file is
written beside its place and renamed over it (a rename is atomic on one file system); an object is one
upload, which object storage makes visible whole or not at all (there a rename is a copy and a delete, so
none is used).

Layout of a workdir (checkpoints' insides are Orbax's):

    config.json                     the training config (`config_record`)
    metrics.jsonl, tensorboard/     the training metrics (`metric_logging`)
    checkpoints/<step>/             training checkpoints
    checkpoints_best/<step>/        the best checkpoint by FID (--mode eval)
    samples/samples_<step>.png      the grids drawn during training
    <mode>/<mode>_<label>.png/.npz  --mode sample | inpaint | interpolate
    stats/<dataset>_<split>.npz     --mode stats
    eval/...                        --mode eval: feature cache, metrics, report.json
    .<role>.lock                    who runs on the folder (local disks only; see `lock`)
"""
from __future__ import annotations

import io
import os
import uuid
from typing import Any

import numpy as np
from etils import epath
from PIL import Image

CONFIG = "config.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
BEST_CHECKPOINTS = "checkpoints_best"
SAMPLES = "samples"
STATS = "stats"
EVAL = "eval"

PathLike = str | os.PathLike
# The object storage a workdir may be on: the one Orbax writes checkpoints to (orbax-checkpoint 0.12
# builds TensorStore specs for gs:// and local paths only; an s3:// workdir fails at its first save).
REMOTE_SCHEMES = ("gs",)


def is_remote(path: PathLike) -> bool:
    """Whether `path` is a URL of object storage (gs://, s3://, ...) rather than a local path."""
    return "://" in os.fspath(path)


def path(location: PathLike) -> epath.Path:
    """`location` as an `epath.Path`: a local one made absolute (as Orbax needs), a URL kept as it is."""
    location = os.fspath(location)
    return epath.Path(location if is_remote(location) else os.path.abspath(os.path.expanduser(location)))


def default_workdir(config_file: str) -> str:
    """The workdir of a run that names none: `runs/<config file name>` (e.g. runs/celeba), in the current folder."""
    return os.path.join("runs", os.path.splitext(os.path.basename(config_file))[0])


# The files of a run, by role.

def config_file(workdir: PathLike) -> epath.Path:
    return path(workdir) / CONFIG


def metrics_file(workdir: PathLike) -> epath.Path:
    return path(workdir) / METRICS


def tensorboard_dir(workdir: PathLike) -> epath.Path:
    return path(workdir) / TENSORBOARD


def checkpoints_dir(workdir: PathLike) -> epath.Path:
    return path(workdir) / CHECKPOINTS


def best_checkpoints_dir(workdir: PathLike) -> epath.Path:
    return path(workdir) / BEST_CHECKPOINTS


def training_grid(workdir: PathLike, step: int) -> epath.Path:
    """The sample grid drawn at training step `step`."""
    return path(workdir) / SAMPLES / f"samples_{step:07d}.png"


def mode_output(workdir: PathLike, mode: str, label: str, extension: str) -> epath.Path:
    """What --mode `mode` writes, e.g. `sample/sample_step_4000.png` (extension with its dot)."""
    return path(workdir) / mode / f"{mode}_{label}{extension}"


def default_statistics(workdir: PathLike, dataset: str, split: str) -> epath.Path:
    """Where --mode stats writes the reference statistics of `dataset`'s `split`."""
    return path(workdir) / STATS / f"{dataset}_{split}.npz"


def eval_dir(workdir: PathLike) -> epath.Path:
    return path(workdir) / EVAL


def lock_file(workdir: PathLike, role: str) -> epath.Path:
    return path(workdir) / f".{role}.lock"


# Reading and writing.

def write_bytes(target: PathLike, data: bytes) -> None:
    """Writes `data` to `target` whole (creating its folder): a kill leaves the old file or the new one."""
    target = path(target)
    if is_remote(target):
        target.write_bytes(data)  # one upload: the object appears whole or not at all
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own, so that two writers of one file never write into each other's temporary file.
    temporary = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        temporary.write_bytes(data)
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_text(target: PathLike, text: str) -> None:
    """`write_bytes` of `text` in UTF-8."""
    write_bytes(target, text.encode("utf-8"))


def read_bytes(source: PathLike) -> bytes:
    return path(source).read_bytes()


def read_text(source: PathLike) -> str:
    return read_bytes(source).decode("utf-8")


def exists(location: PathLike) -> bool:
    return path(location).exists()


def save_npz(target: PathLike, compressed: bool = False, **arrays: Any) -> None:
    """Writes `arrays` as one `.npz` file, whole (see `write_bytes`)."""
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    write_bytes(target, buffer.getvalue())


def load_npz(source: PathLike) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` file, read into memory."""
    with np.load(io.BytesIO(read_bytes(source)), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def save_png(target: PathLike, pixels: np.ndarray) -> None:
    """Writes uint8 pixels, (H, W), (H, W, 1) or (H, W, 3), as a PNG file, whole."""
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels).save(buffer, "PNG")
    write_bytes(target, buffer.getvalue())
