"""--mode stats (modes/stats.py) and --mode eval (modes/sweep.py) on a tiny MNIST run:
statistics, the sweep, resuming, the best checkpoint."""
import json
import os

import numpy as np
import pytest

from ncsn_jax import cli
from ncsn_jax.errors import CheckpointNotFoundError, ConfigError, DataError
from ncsn_jax.evaluation import digits, metrics
from ncsn_jax.modes import Options, stats, sweep, train
from ncsn_jax.run import checkpoints, weights
from ncsn_jax.sampling import sharded
from ncsn_jax.train_state import SamplingState
from tests.test_main import tiny_mnist

# Two sampled batches of 8 per checkpoint (the second trimmed to 4), then 16 for the best.
EVAL = {"eval.num_samples": 12, "eval.final_num_samples": 16, "eval.kid_subsets": 5, "eval.kid_subset_size": 8}


def eval_config(**overrides):
    return tiny_mnist(**{**EVAL, **overrides})


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    """Checkpoints 3 and 6 of the tiny MNIST run, and the statistics of the training digits."""
    workdir = tmp_path_factory.mktemp("mnist")
    config = eval_config()
    train.run(config, str(workdir), Options("train"))
    cli.run(config, str(workdir), "stats")
    return workdir


def test_stats_are_the_moments_of_every_training_digit(trained_workdir):
    statistics = stats.load_reference_statistics(str(trained_workdir / "stats" / "mnist_train.npz"))
    images, _ = digits.load_labelled_digits("train")
    features, _ = digits.make_digit_feature_fn(digits.load_digit_classifier())(images)
    np.testing.assert_allclose(statistics.mu, features.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(statistics.sigma, np.cov(features, rowvar=False), rtol=1e-4, atol=1e-4)
    assert statistics.kid_features.shape == (4_500, features.shape[1])  # kid_reference_size 5,000 > 4,500


def test_published_statistics_without_kid_features(tmp_path):
    path = tmp_path / "published.npz"
    mu, sigma = np.zeros(3), np.eye(3)
    np.savez(path, mu=mu, sigma=sigma)  # the TTUR / pytorch-fid format
    statistics = stats.load_reference_statistics(str(path))
    assert statistics.kid_features is None
    features = np.random.default_rng(0).normal(size=(50, 3))
    result = sweep.quality_metrics(features, np.zeros((50, 10)), statistics, eval_config())
    assert "kid" not in result and result["fd"] == pytest.approx(
        metrics.frechet_distance(features.mean(0), np.cov(features, rowvar=False), mu, sigma))
    assert result["inception_score"] == pytest.approx(1.0)  # uniform class probabilities


def test_eval_sweeps_the_checkpoints_and_keeps_the_best(trained_workdir):
    config = eval_config()
    report = sweep.run(config, str(trained_workdir), Options("eval"))
    assert set(report["checkpoints"]) == {"3", "6"}
    fds = {int(step): result["fd"] for step, result in report["checkpoints"].items()}
    assert report["best_step"] == min(fds, key=fds.get)
    for result in report["checkpoints"].values():
        assert result["num_samples"] == 12 and np.isfinite(result["fd"]) and result["fd"] > 0
        assert 1.0 <= result["inception_score"] <= 10.0 and "kid" in result
    assert report["best"]["num_samples"] == 16
    with open(trained_workdir / "eval" / "report.json") as file:
        assert json.load(file) == json.loads(json.dumps(report))
    with checkpoints.Checkpointer(trained_workdir / "checkpoints_best", keep_best_by="fd") as best:
        assert best.all_steps() == [report["best_step"]]
    (best_dir,) = (trained_workdir / "eval").glob(f"step_{report['best_step']}_n12_*")
    assert (best_dir / "samples.png").exists() and (best_dir / "metrics.json").exists()


def record_first_batches(monkeypatch) -> list[int]:
    """The batch index at which each later call of `sharded.sample_batches` starts, appended as it is made."""
    started_at = []
    real_sample_batches = sharded.sample_batches

    def recording_sample_batches(*args, first_batch=0, **kwargs):
        started_at.append(first_batch)
        return real_sample_batches(*args, first_batch=first_batch, **kwargs)

    monkeypatch.setattr(sharded, "sample_batches", recording_sample_batches)
    return started_at


def test_interrupted_eval_resumes_at_the_next_batch(trained_workdir, monkeypatch):
    config = eval_config(**{"eval.final_num_samples": 0})
    first = sweep.run(config, str(trained_workdir), Options("eval", checkpoint_step=3))["checkpoints"]["3"]
    # As if killed after the first sampled batch: only batch 0 is on disk.
    (step_dir,) = (trained_workdir / "eval").glob("step_3_n12_*")
    os.remove(step_dir / "metrics.json")
    os.remove(step_dir / "batch_00001.npz")
    started_at = record_first_batches(monkeypatch)
    resumed = sweep.run(config, str(trained_workdir), Options("eval", checkpoint_step=3))["checkpoints"]["3"]
    assert started_at == [1]
    assert resumed == pytest.approx(first, rel=1e-6)
    # Other sampler settings are other samples: nothing cached is reused.
    changed = sweep.run(eval_config(**{"eval.final_num_samples": 0, "sampling.step_lr": 2e-4}),
                        str(trained_workdir), Options("eval", checkpoint_step=3))["checkpoints"]["3"]
    assert started_at == [1, 0] and changed["fd"] != first["fd"]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other arrays"])
def test_a_broken_cached_batch_is_sampled_again_with_a_warning(trained_workdir, monkeypatch, caplog, damage):
    config = eval_config(**{"eval.final_num_samples": 0})
    first = sweep.run(config, str(trained_workdir), Options("eval", checkpoint_step=3))["checkpoints"]["3"]
    # This config's cache (other tests of the module leave others): the one whose metrics are these.
    (step_dir,) = [cache for cache in (trained_workdir / "eval").glob("step_3_n12_*")
                   if json.loads((cache / "metrics.json").read_text())["fd"] == first["fd"]]
    batch = step_dir / "batch_00001.npz"
    contents = batch.read_bytes()
    if damage == "other arrays":
        np.savez(batch, images=np.zeros(3))
    else:
        batch.write_bytes(contents[: len(contents) // 2] if damage == "truncated" else b"not an npz file")
    started_at = record_first_batches(monkeypatch)
    again = sweep.run(config, str(trained_workdir), Options("eval", checkpoint_step=3))["checkpoints"]["3"]
    assert started_at == [1] and again == pytest.approx(first, rel=1e-6)
    assert any("batch_00001.npz cannot be read" in message for message in caplog.messages)


def test_eval_without_statistics_says_to_run_stats(tmp_path):
    with pytest.raises(DataError, match="--mode stats"):
        cli.run(eval_config(), str(tmp_path), "eval")


def test_statistics_of_other_features_are_refused(trained_workdir, tmp_path):
    path = tmp_path / "inception_like.npz"
    np.savez(path, mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ConfigError, match="2048 features"):
        sweep.run(eval_config(**{"eval.stats_path": str(path)}), str(trained_workdir), Options("eval"))


def test_eval_of_a_missing_step_is_a_clear_error(trained_workdir):
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint of step 4"):
        sweep.run(eval_config(), str(trained_workdir), Options("eval", checkpoint_step=4))


def test_the_sweep_reads_only_the_sampling_weights(trained_workdir, monkeypatch):
    loaded = []
    real_load = weights.load_sampling_state

    def recording_load(*args, **kwargs):
        loaded.append(real_load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(weights, "load_sampling_state", recording_load)
    sweep.run(eval_config(**{"eval.final_num_samples": 0}), str(trained_workdir), Options("eval"))
    # Each checkpoint of the sweep, then the best again to keep it: θ' and the ladder, no θ, no Adam.
    assert [int(state.step) for state in loaded[:2]] == [3, 6] and len(loaded) == 3
    for state in loaded:
        assert isinstance(state, SamplingState)


def test_the_sampler_is_part_of_the_cache_key_and_the_paper_sampler_keeps_its_key():
    extractor = type("Extractor", (), {"name": "digits"})()
    digest = sweep._settings_digest  # pylint: disable=protected-access
    default = digest(eval_config(), extractor)
    # The paper's sampler keeps the digest that the code before the other samplers gave (computed with
    # that commit's sweep.py), so existing caches stay valid.
    assert eval_config().sampling.method == "ald" and default == "56ff431c"
    assert digest(eval_config(**{"sampling.snr": 0.3}), extractor) == default  # pc's setting only
    digests = {digest(eval_config(**overrides), extractor) for overrides in (
        {"sampling.method": "cas"}, {"sampling.method": "ode"}, {"sampling.ladder_stride": 2},
        {"sampling.method": "pc"}, {"sampling.method": "pc", "sampling.snr": 0.3},
        {"sampling.method": "pc", "sampling.corrector_steps": 2},
        {"sampling.method": "ancestral"}, {"sampling.method": "ancestral", "sampling.schedule": "rho"},
        {"sampling.method": "ancestral", "sampling.schedule": "rho", "sampling.num_levels": 12},
        {"sampling.method": "ancestral", "sampling.schedule": "rho", "sampling.rho": 3.0},
        {"sampling.method": "edm", "sampling.schedule": "rho"},
        {"sampling.method": "edm", "sampling.schedule": "rho", "sampling.churn": 0.0},
        {"sampling.method": "dpm_solver_2m_sde", "sampling.schedule": "rho"})}
    assert len(digests) == 13 and default not in digests
    # ald reads neither the ρ-schedule's settings nor edm's: they leave its key alone.
    assert digest(eval_config(**{"sampling.num_levels": 7, "sampling.churn": 1.0}), extractor) == default
