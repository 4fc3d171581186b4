"""`--mode stats`: the reference statistics of a dataset's features, for the Fréchet distance and KID.

File: `<workdir>/stats/<dataset>_<split>.npz` (or `eval.stats_path`): μ and Σ in the TTUR /
pytorch-fid format (`mu`, `sigma`), plus `kid_features`, a uniform random sample of the split's features
for KID. Published statistics (μ and Σ only) can be used instead.
"""
from __future__ import annotations

import dataclasses
import io

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging

from ncsn_jax.data import pipeline
from ncsn_jax.data.reservoir import Reservoir
from ncsn_jax.errors import DataError
from ncsn_jax.evaluation import metrics
from ncsn_jax.evaluation.features import FeatureExtractor, feature_extractor
from ncsn_jax.modes import Options
from ncsn_jax.run import files


@dataclasses.dataclass(frozen=True)
class ReferenceStatistics:
    """μ (D,) and Σ (D, D) of a dataset's features, and some of its features for KID (or None)."""

    mu: np.ndarray
    sigma: np.ndarray
    kid_features: np.ndarray | None


def statistics_path(config: ml_collections.ConfigDict, workdir: str) -> str:
    """`eval.stats_path`, or `<workdir>/stats/<dataset>_<split>.npz` when that is empty."""
    if config.eval.stats_path:
        return config.eval.stats_path
    return str(files.default_statistics(workdir, config.data.dataset, config.eval.stats_split))


def dataset_statistics(
    config: ml_collections.ConfigDict, extractor: FeatureExtractor, split: str, progress_bar: bool = True
) -> ReferenceStatistics:
    """Feature statistics of a whole split (without flips), in batches of `eval.batch_size`.

    A remainder smaller than one batch is left out (logged).
    """
    batch_size = config.eval.batch_size
    batches = pipeline.get_dataset(config, split, batch_size, repeat=False, process_index=0, process_count=1)
    accumulator = metrics.FeatureStatistics()
    # The KID reference is a uniform sample of the split, not its first images: files are often sorted
    # (the MNIST digits are, by class).
    reservoir = Reservoir(config.eval.kid_reference_size, np.random.default_rng(config.seed))
    for batch in tqdm.tqdm(batches, desc=f"stats {split}", unit="batch", disable=not progress_bar):
        features, _ = extractor.fn(batch)
        accumulator.update(features)
        reservoir.update(features)
    if accumulator.count == 0:
        raise DataError(f"the {split} split has fewer than config.eval.batch_size={batch_size} images: "
                        "lower --config.eval.batch_size")
    logging.info("statistics of %d %s images (%s features)", accumulator.count, split, extractor.name)
    mu, sigma = accumulator.mean_and_covariance()
    return ReferenceStatistics(mu, sigma, reservoir.sample())


def save_reference_statistics(path: str, stats: ReferenceStatistics) -> None:
    """Writes `mu` and `sigma` (readable by TTUR and pytorch-fid) and `kid_features`, local or gs://, ..."""
    extra = {} if stats.kid_features is None else {"kid_features": stats.kid_features}
    contents = io.BytesIO()
    metrics.save_statistics(contents, stats.mu, stats.sigma, **extra)
    files.write_bytes(path, contents.getvalue())


def load_reference_statistics(path: str) -> ReferenceStatistics:
    """Reads a statistics file; published ones (mu and sigma only) give `kid_features` None.

    Raises:
      DataError: no file at `path` (the message says how to make one), or one that lacks `mu` or `sigma`
        or whose shapes disagree.
    """
    if not files.exists(path):
        raise DataError(
            f"no reference statistics at {path}: compute them with --mode stats (same config and workdir), "
            "or set --config.eval.stats_path to a TTUR/pytorch-fid .npz file")
    contents = files.read_bytes(path)
    try:
        mu, sigma = metrics.load_statistics(io.BytesIO(contents), name=str(path))
    except ValueError as error:  # what load_statistics says of a file that is not a statistics file
        raise DataError(f"{error}. Recompute it with --mode stats, or point --config.eval.stats_path at a "
                        "TTUR/pytorch-fid .npz file") from error
    with np.load(io.BytesIO(contents)) as data:
        kid_features = data["kid_features"] if "kid_features" in data.files else None
    return ReferenceStatistics(mu, sigma, kid_features)


def run(config: ml_collections.ConfigDict, workdir: str, options: Options) -> str:
    """`--mode stats`: the statistics of `eval.stats_split`, written to `statistics_path`; returns it
    (`options` holds nothing it reads)."""
    extractor = feature_extractor(config)
    stats = dataset_statistics(config, extractor, config.eval.stats_split)
    path = statistics_path(config, workdir)
    if jax.process_index() == 0:
        save_reference_statistics(path, stats)
        logging.info("wrote %s", path)
    return path


