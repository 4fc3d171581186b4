"""Tests for ncsn_jax.evaluation.digits: the shipped classifier's held-out accuracy, the ordering of its
Fréchet distance on real, blurred and noise digits, deterministic training and the weights file."""
import numpy as np
import pytest
from scipy import ndimage

from ncsn_jax.evaluation import digits, metrics


@pytest.fixture(scope="module")
def train_digits():
    return digits.load_labelled_digits("train")


@pytest.fixture(scope="module")
def test_digits():
    return digits.load_labelled_digits("test")


@pytest.fixture(scope="module")
def feature_fn():
    return digits.make_digit_feature_fn(digits.load_digit_classifier())


def fit_gaussian(features):
    stats = metrics.FeatureStatistics()
    stats.update(features)
    return stats.mean_and_covariance()


def test_labelled_digits_are_the_dataset_splits(train_digits, test_digits):
    for (images, labels), count in ((train_digits, 450), (test_digits, 50)):
        assert images.shape == (10 * count, 28, 28, 1) and images.dtype == np.float32
        assert 0.0 <= images.min() and images.max() <= 1.0
        np.testing.assert_array_equal(np.bincount(labels), [count] * 10)


def test_shipped_classifier_recognises_held_out_digits(test_digits, feature_fn):
    images, labels = test_digits
    features, logits = feature_fn(images)
    assert features.shape == (500, 128) and logits.shape == (500, 10)
    assert features.dtype == logits.dtype == np.float32
    # 98.0% when the weights were written (python -m ncsn_jax.evaluation.digits).
    assert np.mean(logits.argmax(axis=1) == labels) >= 0.96


def test_frechet_distance_ranks_real_then_blurred_then_noise(train_digits, test_digits, feature_fn):
    reference = fit_gaussian(feature_fn(train_digits[0])[0])
    real = test_digits[0]
    candidates = {
        "real": real,
        "blurred": ndimage.gaussian_filter(real, sigma=(0, 1.5, 1.5, 0)),
        "noise": np.random.default_rng(0).uniform(size=real.shape).astype(np.float32),
    }
    distance = {name: metrics.frechet_distance(*fit_gaussian(feature_fn(images)[0]), *reference)
                for name, images in candidates.items()}
    # When the weights were written: real 39.9, blurred 435, noise 2811.
    assert distance["real"] < 80
    assert distance["blurred"] > 4 * distance["real"]
    assert distance["noise"] > 3 * distance["blurred"]


def test_training_is_deterministic_for_a_seed(train_digits):
    images, labels = train_digits[0][::18], train_digits[1][::18]  # 250 digits, all ten classes
    first, again, other_seed = (digits.train_digit_classifier(images, labels, seed=seed, num_steps=10)
                                for seed in (0, 0, 1))
    for name, module in first.items():
        for parameter, value in module.items():
            np.testing.assert_array_equal(value, again[name][parameter])
    assert not np.array_equal(first["conv1"]["kernel"], other_seed["conv1"]["kernel"])


def test_weights_round_trip_and_a_wrong_file_is_refused(tmp_path):
    params = digits.load_digit_classifier()
    digits.save_digit_classifier(tmp_path / "copy.npz", params)
    loaded = digits.load_digit_classifier(tmp_path / "copy.npz")
    for name, module in params.items():
        for parameter, value in module.items():
            np.testing.assert_array_equal(loaded[name][parameter], value)
    np.savez(tmp_path / "other.npz", **{"conv1/kernel": np.zeros((5, 5, 1, 16))})
    with pytest.raises(ValueError, match="other.npz.*not hold DigitClassifier weights.*evaluation.digits"):
        digits.load_digit_classifier(tmp_path / "other.npz")


def test_bad_inputs_get_errors_that_say_what_is_expected(feature_fn):
    with pytest.raises(ValueError, match=r"\(N, 28, 28, 1\).*got shape \(4, 28, 28\)"):
        feature_fn(np.zeros((4, 28, 28)))
    with pytest.raises(ValueError, match="digits 0–9, got values from 0 to 10"):
        digits.train_digit_classifier(np.zeros((2, 28, 28, 1)), np.array([0, 10]))
    with pytest.raises(ValueError, match=r"labels must be \(2,\) integers"):
        digits.train_digit_classifier(np.zeros((2, 28, 28, 1)), np.array([0.0, 1.0]))
