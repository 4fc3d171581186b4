"""--mode tune's pieces: image selection (technique 1's 60,000 / 10,000 rule) and the schedule."""
import numpy as np
import pytest
from scipy.spatial.distance import pdist
from sklearn.datasets import load_digits

from configs import default
from ncsn_jax import schedule
from ncsn_jax.errors import DataError
from ncsn_jax.modes import tune


def batches_of(images, size):
    return (images[i:i + size] for i in range(0, len(images), size))


def test_small_datasets_use_every_image():
    images = np.random.default_rng(0).random((300, 4, 4, 1)).astype(np.float32)
    selected, seen = tune.select_images(batches_of(images, 7), seed=0)
    assert seen == 300
    np.testing.assert_array_equal(selected, images)


def test_large_datasets_use_a_uniform_subset(monkeypatch):
    monkeypatch.setattr(tune, "ALL_IMAGES_UP_TO", 600)
    monkeypatch.setattr(tune, "SUBSET_SIZE", 100)
    # Image i holds the value i: the subset's values must look uniform over 0..999.
    images = np.arange(1000, dtype=np.float32).reshape(1000, 1, 1, 1)
    selected, seen = tune.select_images(batches_of(images, 64), seed=0)
    assert seen == 1000 and selected.shape == (100, 1, 1, 1)
    values = selected.ravel()
    assert len(set(values.tolist())) == 100
    assert 350 < values.mean() < 650  # mean of 100 uniform draws: 500 ± ~29
    assert (values >= 600).sum() > 20  # images after the first 600 are represented


def test_tuned_schedule_on_real_digits():
    digits = load_digits().images[:, :, :, None].astype(np.float32) / 16.0  # real 8x8 digits in [0, 1]
    config = default.get_default_config()
    config.sampling.n_steps_each = 5
    tuned = tune.tune_schedule(digits, len(digits), config)
    assert tuned.sigma_begin == pytest.approx(pdist(digits.reshape(len(digits), -1)).max(), rel=1e-9)
    assert tuned.num_scales == schedule.num_noise_scales(64, tuned.sigma_begin, 0.01, 0.5)
    sigmas = schedule.geometric_sigmas(tuned.sigma_begin, 0.01, tuned.num_scales)
    np.testing.assert_allclose(sigmas[0] / sigmas[1], tuned.gamma, rtol=1e-5)
    assert tuned.step_lr == schedule.langevin_step_size(tuned.gamma, 0.01, 5)
    text = tune.report(tuned, config)
    assert f"config.model.num_scales = {tuned.num_scales}" in text


def test_fewer_than_two_images_is_an_error():
    with pytest.raises(DataError, match="at least 2"):
        tune.select_images([np.zeros((1, 2, 2, 1))], seed=0)
