"""`--mode eval`: the paper's model selection, a sample-quality sweep over the training checkpoints.

The protocol: the Fréchet distance (FID with Inception features) of `eval.num_samples` (1,000) samples
for every checkpoint in a range, then of `eval.final_num_samples` (50,000) for the best one; Inception
Score and KID beside it. Samples are rounded to 8-bit levels first, as the images that published
statistics were computed from.

Files under `<workdir>/`:
  eval/step_<s>_n<N>_<digest>/  per sampled batch `batch_<i>.npz` (features, logits): an interrupted
                                sweep resumes at the next batch; `metrics.json`; `samples.png`. The
                                digest is of the sampler settings, seed and feature extractor.
  eval/report.json              every evaluated checkpoint's metrics and the best step
  checkpoints_best/             the checkpoint with the lowest Fréchet distance, kept by Orbax
"""
from __future__ import annotations

import hashlib
import json
import math
import zipfile

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from ncsn_jax.errors import CheckpointNotFoundError, ConfigError
from ncsn_jax.evaluation import metrics
from ncsn_jax.evaluation.features import FeatureExtractor, feature_extractor
from ncsn_jax.modes import Options
from ncsn_jax.modes.stats import ReferenceStatistics, load_reference_statistics, statistics_path
from ncsn_jax.run import checkpoints, files, images, weights
from ncsn_jax.run.lock import WorkdirLock
from ncsn_jax.runtime import data_parallel
from ncsn_jax.sampling import methods, sharded
from ncsn_jax.train_state import SamplingState


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
    state: SamplingState,
    config: ml_collections.ConfigDict,
    extractor: FeatureExtractor,
    rng: jax.Array,
    num_samples: int,
    mesh: Mesh,
    cache_dir: files.PathLike,
) -> tuple[np.ndarray, np.ndarray]:
    """Features and logits of `num_samples` samples, each sampled batch's kept in `cache_dir`.

    Batches already in `cache_dir` are read, not sampled again; a batch's samples depend only on
    `fold_in(rng, batch index)`, so an interrupted run gives what an uninterrupted one would.
    """
    num_batches = math.ceil(num_samples / config.sampling.batch_size)
    parts = []  # each batch's features and logits, read from the cache or sampled here
    while len(parts) < num_batches and (cached := _read_batch(cache_dir, len(parts))) is not None:
        parts.append(cached)
    done = len(parts)
    if jax.process_count() > 1:
        # Every process must sample the same batches; process 0 writes the cache, so its view decides (a
        # network file system may show another host a batch late).
        done = int(multihost_utils.broadcast_one_to_all(np.int32(done)))
        parts = parts[:done] + [files.load_npz(_batch_path(cache_dir, i)) for i in range(len(parts), done)]
    if done:
        logging.info("%s: %d of %d sample batches already done", cache_dir, done, num_batches)
    image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
    batches = sharded.sample_batches(state.score_fn(), state.sigmas, config.sampling, image_shape, rng,
                                     num_samples, mesh, first_batch=done)
    for index, samples in tqdm.tqdm(batches, total=num_batches, initial=done, desc="eval samples", unit="batch"):
        samples = images.to_8bit_levels(samples)
        features, logits = extractor.fn(samples)
        if jax.process_index() == 0:
            if index == 0:
                images.save_grid(samples[:64], files.path(cache_dir) / "samples.png")
            # Whole: a kill during the write never leaves a truncated batch that would be read.
            files.save_npz(_batch_path(cache_dir, index), features=features, logits=logits)
        parts.append({"features": features, "logits": logits})
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("ncsn_jax.modes.sweep.sample_features")
    return (np.concatenate([p["features"] for p in parts])[:num_samples],
            np.concatenate([p["logits"] for p in parts])[:num_samples])


def _batch_path(cache_dir: files.PathLike, index: int) -> epath.Path:
    return files.path(cache_dir) / f"batch_{index:05d}.npz"


def _read_batch(cache_dir: files.PathLike, index: int) -> dict[str, np.ndarray] | None:
    """A cached batch's features and logits; None when there is none or it cannot be read (it is sampled
    again, with a warning for one that is there but broken)."""
    path = _batch_path(cache_dir, index)
    if not files.exists(path):
        return None
    try:
        batch = files.load_npz(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        batch = {"error": str(error)}
    if not {"features", "logits"} <= set(batch):
        logging.warning("%s cannot be read (%s): sampling that batch again", path, batch.get("error", "not a batch"))
        return None
    return batch


def evaluate_checkpoint(
    state: SamplingState, config: ml_collections.ConfigDict, extractor: FeatureExtractor,
    reference: ReferenceStatistics, num_samples: int, mesh: Mesh, eval_dir: files.PathLike,
) -> dict[str, float]:
    """The metrics of one checkpoint's EMA weights on `num_samples` samples.

    The sampled batches' features are cached under `eval_dir` in a folder named by the step, the sample
    count and a digest of everything they depend on (sampler settings, seed, feature extractor), so a
    change of settings never reuses stale samples. The metrics are recomputed from them each time (cheap),
    so new reference statistics take effect.
    """
    step = int(state.step)
    cache_dir = files.path(eval_dir) / f"step_{step}_n{num_samples}_{_settings_digest(config, extractor)}"
    rng = jax.random.fold_in(jax.random.key(config.seed), step)
    features, logits = sample_features(state, config, extractor, rng, num_samples, mesh, cache_dir)
    result = quality_metrics(features, logits, reference, config)
    if jax.process_index() == 0:
        files.write_text(cache_dir / "metrics.json", json.dumps(result, indent=1))
    return result


# The sampling settings in every digest (the paper's sampler's, from before there were others).
_DIGEST_SAMPLING_FIELDS = ("batch_size", "n_steps_each", "step_lr", "denoise")


def _settings_digest(config: ml_collections.ConfigDict, extractor: FeatureExtractor) -> str:
    sampling, model = config.sampling, config.model
    settings = [config.seed, extractor.name, *(sampling[field] for field in _DIGEST_SAMPLING_FIELDS),
                model.sigma_begin, model.sigma_end, model.num_scales]
    if not methods.is_papers_sampler(sampling):
        # Other samplers' samples are other samples; the paper's sampler keeps the digest (and the
        # caches) it had before there were others.
        settings += [sampling.method, sampling.ladder_stride]
        settings += [sampling[field] for field in methods.settings_in_use(sampling)
                     if field not in _DIGEST_SAMPLING_FIELDS]
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:8]


def steps_to_evaluate(available: list[int], config: ml_collections.ConfigDict, only_step: int | None) -> list[int]:
    """The checkpoint steps of the sweep: `only_step`, or those in [eval.begin_step, eval.end_step]."""
    if only_step is not None:
        if only_step not in available:
            raise CheckpointNotFoundError(f"no checkpoint of step {only_step} (have {available})")
        return [only_step]
    end = math.inf if config.eval.end_step is None else config.eval.end_step
    steps = [s for s in available if config.eval.begin_step <= s <= end]
    if not steps:
        raise CheckpointNotFoundError(
            f"no checkpoint with {config.eval.begin_step} <= step <= {end} (have {available}): train first, "
            "or change --config.eval.begin_step / end_step")
    return steps


def run(config: ml_collections.ConfigDict, workdir: str, options: Options) -> dict:
    """`--mode eval`: the sweep, the best checkpoint on more samples, `eval/report.json`; returns the report.

    Evaluates the checkpoints from `eval.begin_step` to `eval.end_step`, or only `options.checkpoint_step`.

    The report describes this sweep only; the metrics of earlier sweeps stay in their `eval/step_*`
    folders.

    The best checkpoint's θ' and ladder (lowest Fréchet distance on `eval.num_samples`) are also saved to
    `<workdir>/checkpoints_best`, where Orbax keeps the best one of every sweep so far.
    """
    with WorkdirLock(workdir, "eval"):  # one sweep at a time writes the feature cache and report
        reference = load_reference_statistics(statistics_path(config, workdir))
        extractor = feature_extractor(config)
        feature_dim = extractor.feature_dim((config.data.image_size, config.data.image_size, config.data.channels))
        if reference.mu.shape[0] != feature_dim:
            raise ConfigError(
                f"the reference statistics at {statistics_path(config, workdir)} have {reference.mu.shape[0]} "
                f"features, but {extractor.name} gives {feature_dim}: recompute them with --mode stats and the "
                "same config.eval.features")
        mesh = data_parallel.data_mesh()
        steps = steps_to_evaluate(weights.checkpoint_steps(workdir), config, options.checkpoint_step)
        eval_dir = files.eval_dir(workdir)
        results = {}
        for step in steps:
            # Only θ' and the ladder are read, and one checkpoint's at a time.
            state = weights.load_sampling_state(config, workdir, mesh, step)
            results[step] = evaluate_checkpoint(
                state, config, extractor, reference, config.eval.num_samples, mesh, eval_dir)
            logging.info("step %d: %s", step, _summary(results[step]))
            del state
        best_step = min(steps, key=lambda step: results[step]["fd"])
        state = weights.load_sampling_state(config, workdir, mesh, best_step)
        report = {"features": extractor.name, "reference": statistics_path(config, workdir),
                  "checkpoints": {str(s): r for s, r in results.items()}, "best_step": best_step}

        with checkpoints.Checkpointer(files.best_checkpoints_dir(workdir), keep_best_by="fd") as best:
            if best_step not in best.all_steps():
                # force: Orbax otherwise refuses a step older than the one it holds; it keeps the lower FD.
                best.save(best_step, state, force=True, metrics={"fd": results[best_step]["fd"]})
        final_samples = config.eval.final_num_samples
        if final_samples > config.eval.num_samples:
            report["best"] = evaluate_checkpoint(
                state, config, extractor, reference, final_samples, mesh, eval_dir)
            logging.info("best step %d on %d samples: %s", best_step, final_samples, _summary(report["best"]))
        if jax.process_index() == 0:
            files.write_text(eval_dir / "report.json", json.dumps(report, indent=1))
    return report


def _summary(result: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in result.items())
