"""Sample quality: reference statistics of a dataset (`--mode stats`) and a checkpoint sweep (`--mode eval`).

The paper's protocol: FID of `eval.num_samples` (1,000) samples for every checkpoint in a range, then of
`eval.final_num_samples` (50,000) for the best one; Inception Score and KID beside it. Features come from
the FID Inception-v3 (pool3; its logits for IS), or for MNIST from the project's digit classifier
(`eval.features`). Samples are rounded to 8-bit levels first, as the images that published statistics
were computed from.

Files under `<workdir>/`:
  stats/<dataset>_<split>.npz   μ and Σ in the TTUR / pytorch-fid format (`mu`, `sigma`), plus
                                `kid_features`, a sample of reference features for KID
  eval/step_<s>_n<N>_<digest>/  per sampled batch `batch_<i>.npz` (features, logits): an interrupted
                                sweep resumes at the next batch; `metrics.json`; `samples.png`. The
                                digest is of the sampler settings, seed and feature extractor.
  eval/report.json              every evaluated checkpoint's metrics and the best step
  checkpoints_best/             the checkpoint with the lowest Fréchet distance, kept by Orbax
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Callable

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging

from ncsn_jax import checkpoints, datasets, generate, images, parallel
from ncsn_jax.evaluation import metrics

FeatureFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """A named function of images (N, H, W, C) in [0, 1] → (features (N, D), logits (N, K))."""

    name: str
    fn: FeatureFn


@dataclasses.dataclass(frozen=True)
class ReferenceStatistics:
    """μ (D,) and Σ (D, D) of a dataset's features, and some of its features for KID (or None)."""

    mu: np.ndarray
    sigma: np.ndarray
    kid_features: np.ndarray | None


def feature_extractor(config: ml_collections.ConfigDict) -> FeatureExtractor:
    """The feature extractor that `config.eval.features` names ("auto": digits for MNIST, else Inception).

    Raises:
      ValueError: an unknown name, or the digit classifier asked for images that are not 28×28 grey.
      FileNotFoundError: the Inception weights are neither at `eval.inception_path` nor downloadable.
    """
    kind = config.eval.features
    if kind == "auto":
        kind = "digits" if config.data.dataset == "mnist" else "inception"
    if kind == "digits":
        if (config.data.image_size, config.data.channels) != (28, 1):
            raise ValueError("config.eval.features 'digits' needs 28×28 grey images (the MNIST config); "
                             "use 'inception' for this dataset")
        from ncsn_jax.evaluation import digits  # pylint: disable=import-outside-toplevel

        return FeatureExtractor("digit_classifier", digits.make_digit_feature_fn(digits.load_digit_classifier()))
    if kind == "inception":
        from ncsn_jax.evaluation import inception  # pylint: disable=import-outside-toplevel

        params = inception.load_inception_params(config.eval.inception_path or None)
        return FeatureExtractor("inception_pool3", inception.make_feature_fn(params, config.eval.batch_size))
    raise ValueError(f"config.eval.features is {kind!r}; choose 'auto', 'inception' or 'digits'")


def to_8bit_levels(images_in: np.ndarray) -> np.ndarray:
    """Samples clipped to [0, 1] and rounded to multiples of 1/255, as when saved as 8-bit images."""
    return np.round(np.clip(images_in, 0.0, 1.0) * 255.0).astype(np.float32) / 255.0


def statistics_path(config: ml_collections.ConfigDict, workdir: str) -> str:
    """`eval.stats_path`, or `<workdir>/stats/<dataset>_<split>.npz` when that is empty."""
    if config.eval.stats_path:
        return config.eval.stats_path
    return os.path.join(workdir, "stats", f"{config.data.dataset}_{config.eval.stats_split}.npz")


def dataset_statistics(
    config: ml_collections.ConfigDict, extractor: FeatureExtractor, split: str, progress_bar: bool = True
) -> ReferenceStatistics:
    """Feature statistics of a whole split (without flips), in batches of `eval.batch_size`.

    A remainder smaller than one batch is left out (logged).
    """
    batch_size = config.eval.batch_size
    batches = datasets.get_dataset(config, split, batch_size, repeat=False, process_index=0, process_count=1)
    accumulator = metrics.FeatureStatistics()
    # The KID reference is a uniform sample of the split, not its first images: files are often sorted
    # (the MNIST digits are, by class).
    reservoir = _Reservoir(config.eval.kid_reference_size, np.random.default_rng(config.seed))
    for batch in tqdm.tqdm(batches, desc=f"stats {split}", unit="batch", disable=not progress_bar):
        features, _ = extractor.fn(batch)
        accumulator.update(features)
        reservoir.update(features)
    if accumulator.count == 0:
        raise ValueError(f"the {split} split has fewer than config.eval.batch_size={batch_size} images")
    logging.info("statistics of %d %s images (%s features)", accumulator.count, split, extractor.name)
    mu, sigma = accumulator.mean_and_covariance()
    return ReferenceStatistics(mu, sigma, reservoir.sample())


class _Reservoir:
    """A uniform random sample of `size` rows from a stream of row batches (reservoir sampling)."""

    def __init__(self, size: int, rng: np.random.Generator):
        self._size, self._rng, self._seen = size, rng, 0
        self._rows: np.ndarray | None = None

    def update(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.float32)
        if self._rows is None:
            self._rows = np.empty((self._size, rows.shape[1]), np.float32)
        for row in rows:
            if self._seen < self._size:
                self._rows[self._seen] = row
            else:
                slot = self._rng.integers(0, self._seen + 1)
                if slot < self._size:
                    self._rows[slot] = row
            self._seen += 1

    def sample(self) -> np.ndarray:
        return self._rows[: min(self._seen, self._size)]


def save_reference_statistics(path: str, stats: ReferenceStatistics) -> None:
    """Writes `mu` and `sigma` (readable by TTUR and pytorch-fid) and `kid_features`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    extra = {} if stats.kid_features is None else {"kid_features": stats.kid_features}
    metrics.save_statistics(path, stats.mu, stats.sigma, **extra)


def load_reference_statistics(path: str) -> ReferenceStatistics:
    """Reads a statistics file; published ones (mu and sigma only) give `kid_features` None.

    Raises:
      FileNotFoundError: no file at `path` (the message says how to make one).
      ValueError: the file lacks `mu` or `sigma` or their shapes disagree.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no reference statistics at {path}: compute them with --mode stats (same config and workdir), "
            "or set --config.eval.stats_path to a TTUR/pytorch-fid .npz file")
    mu, sigma = metrics.load_statistics(path)
    with np.load(path) as data:
        kid_features = data["kid_features"] if "kid_features" in data.files else None
    return ReferenceStatistics(mu, sigma, kid_features)


def run_stats(config: ml_collections.ConfigDict, workdir: str) -> str:
    """`--mode stats`: the statistics of `eval.stats_split`, written to `statistics_path`; returns it."""
    extractor = feature_extractor(config)
    stats = dataset_statistics(config, extractor, config.eval.stats_split)
    path = statistics_path(config, workdir)
    if jax.process_index() == 0:
        save_reference_statistics(path, stats)
        logging.info("wrote %s", path)
    return path


def quality_metrics(
    features: np.ndarray, logits: np.ndarray, reference: ReferenceStatistics, config: ml_collections.ConfigDict
) -> dict[str, float]:
    """Fréchet distance (`fd`; FID with Inception features), Inception Score and KID of sample features."""
    accumulator = metrics.FeatureStatistics()
    accumulator.update(features)
    mu, sigma = accumulator.mean_and_covariance()
    result = {"num_samples": int(len(features)),
              "fd": metrics.frechet_distance(mu, sigma, reference.mu, reference.sigma)}
    score_mean, score_std = metrics.inception_score(logits, num_splits=min(10, len(logits)))
    result.update(inception_score=score_mean, inception_score_std=score_std)
    if reference.kid_features is not None:
        kid_mean, kid_std = metrics.kernel_inception_distance(
            features, reference.kid_features, num_subsets=config.eval.kid_subsets,
            subset_size=config.eval.kid_subset_size, seed=config.seed)
        result.update(kid=kid_mean, kid_std=kid_std)
    return result


def sample_features(
    state,
    config: ml_collections.ConfigDict,
    extractor: FeatureExtractor,
    rng: jax.Array,
    num_samples: int,
    mesh,
    cache_dir: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Features and logits of `num_samples` samples, each sampled batch's kept in `cache_dir`.

    Batches already in `cache_dir` are read, not sampled again; a batch's samples depend only on
    `fold_in(rng, batch index)`, so an interrupted run gives what an uninterrupted one would.
    """
    os.makedirs(cache_dir, exist_ok=True)
    num_batches = math.ceil(num_samples / config.sampling.batch_size)
    done = 0
    while done < num_batches and os.path.exists(_batch_path(cache_dir, done)):
        done += 1
    if done:
        logging.info("%s: %d of %d sample batches already done", cache_dir, done, num_batches)
    batches = generate.sample_batches(state, config, rng, num_samples, mesh, first_batch=done)
    for index, samples in tqdm.tqdm(batches, total=num_batches, initial=done, desc="eval samples", unit="batch"):
        samples = to_8bit_levels(samples)
        features, logits = extractor.fn(samples)
        if jax.process_index() == 0:
            if index == 0:
                images.save_grid(samples[:64], os.path.join(cache_dir, "samples.png"))
            _write_atomically(_batch_path(cache_dir, index), features=features, logits=logits)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

        multihost_utils.sync_global_devices("ncsn_jax.evaluate.sample_features")
    parts = [np.load(_batch_path(cache_dir, i)) for i in range(num_batches)]
    return (np.concatenate([p["features"] for p in parts])[:num_samples],
            np.concatenate([p["logits"] for p in parts])[:num_samples])


def _batch_path(cache_dir: str, index: int) -> str:
    return os.path.join(cache_dir, f"batch_{index:05d}.npz")


def _write_atomically(path: str, **arrays: np.ndarray) -> None:
    # A kill during the write leaves only the temporary file, never a truncated batch that would be read.
    temporary = path + ".tmp"
    with open(temporary, "wb") as file:
        np.savez(file, **arrays)
    os.replace(temporary, path)


def evaluate_step(
    state, config: ml_collections.ConfigDict, extractor: FeatureExtractor, reference: ReferenceStatistics,
    num_samples: int, mesh, eval_dir: str,
) -> dict[str, float]:
    """The metrics of one checkpoint's EMA weights on `num_samples` samples.

    The sampled batches' features are cached under `eval_dir` in a folder named by the step, the sample
    count and a digest of everything they depend on (sampler settings, seed, feature extractor), so a
    change of settings never reuses stale samples. The metrics are recomputed from them each time (cheap),
    so new reference statistics take effect.
    """
    step = int(state.step)
    cache_dir = os.path.join(eval_dir, f"step_{step}_n{num_samples}_{_settings_digest(config, extractor)}")
    rng = jax.random.fold_in(jax.random.key(config.seed), step)
    features, logits = sample_features(state, config, extractor, rng, num_samples, mesh, cache_dir)
    result = quality_metrics(features, logits, reference, config)
    if jax.process_index() == 0:
        with open(os.path.join(cache_dir, "metrics.json"), "w") as file:
            json.dump(result, file, indent=1)
    return result


def _settings_digest(config: ml_collections.ConfigDict, extractor: FeatureExtractor) -> str:
    sampling, model = config.sampling, config.model
    settings = [config.seed, extractor.name, sampling.batch_size, sampling.n_steps_each, sampling.step_lr,
                sampling.denoise, model.sigma_begin, model.sigma_end, model.num_scales]
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:8]


def steps_to_evaluate(available: list[int], config: ml_collections.ConfigDict, only_step: int | None) -> list[int]:
    """The checkpoint steps of the sweep: `only_step`, or those in [eval.begin_step, eval.end_step]."""
    if only_step is not None:
        if only_step not in available:
            raise generate.CheckpointNotFoundError(f"no checkpoint of step {only_step} (have {available})")
        return [only_step]
    end = math.inf if config.eval.end_step is None else config.eval.end_step
    steps = [s for s in available if config.eval.begin_step <= s <= end]
    if not steps:
        raise generate.CheckpointNotFoundError(
            f"no checkpoint with {config.eval.begin_step} <= step <= {end} (have {available}): train first, "
            "or change --config.eval.begin_step / end_step")
    return steps


def run_eval(config: ml_collections.ConfigDict, workdir: str, checkpoint_step: int | None = None) -> dict:
    """`--mode eval`: the sweep, the best checkpoint on more samples, `eval/report.json`; returns the report.

    The report describes this sweep only; the metrics of earlier sweeps stay in their `eval/step_*`
    folders.

    The best checkpoint (lowest Fréchet distance on `eval.num_samples`) is also saved to
    `<workdir>/checkpoints_best`, where Orbax keeps the best one of every sweep so far.
    """
    reference = load_reference_statistics(statistics_path(config, workdir))
    extractor = feature_extractor(config)
    feature_dim = _feature_dim(extractor, config)
    if reference.mu.shape[0] != feature_dim:
        raise ValueError(
            f"the reference statistics at {statistics_path(config, workdir)} have {reference.mu.shape[0]} "
            f"features, but {extractor.name} gives {feature_dim}: recompute them with --mode stats and the "
            "same config.eval.features")
    mesh = parallel.data_mesh()
    with checkpoints.Checkpointer(os.path.join(workdir, "checkpoints")) as checkpointer:
        available = checkpointer.all_steps()
    steps = steps_to_evaluate(available, config, checkpoint_step)
    eval_dir = os.path.join(workdir, "eval")
    results = {}
    best_state = None  # kept rather than restored again for the final evaluation
    for step in steps:
        state = generate.load_for_sampling(config, workdir, mesh, step)
        results[step] = evaluate_step(state, config, extractor, reference, config.eval.num_samples, mesh, eval_dir)
        logging.info("step %d: %s", step, _summary(results[step]))
        if best_state is None or results[step]["fd"] < results[int(best_state.step)]["fd"]:
            best_state = state
    state, best_step = best_state, int(best_state.step)
    report = {"features": extractor.name, "reference": statistics_path(config, workdir),
              "checkpoints": {str(s): r for s, r in results.items()}, "best_step": best_step}

    with checkpoints.Checkpointer(os.path.join(workdir, "checkpoints_best"), keep_best_by="fd") as best:
        if best_step not in best.all_steps():
            # force: Orbax otherwise refuses a step older than the one it holds; it then keeps the lower FD.
            best.save(best_step, state, force=True, metrics={"fd": results[best_step]["fd"]})
    final_samples = config.eval.final_num_samples
    if final_samples > config.eval.num_samples:
        report["best"] = evaluate_step(state, config, extractor, reference, final_samples, mesh, eval_dir)
        logging.info("best step %d on %d samples: %s", best_step, final_samples, _summary(report["best"]))
    if jax.process_index() == 0:
        with open(os.path.join(eval_dir, "report.json"), "w") as file:
            json.dump(report, file, indent=1)
    return report


def _feature_dim(extractor: FeatureExtractor, config: ml_collections.ConfigDict) -> int:
    probe = np.zeros((1, config.data.image_size, config.data.image_size, config.data.channels), np.float32)
    return extractor.fn(probe)[0].shape[-1]


def _summary(result: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in result.items())
