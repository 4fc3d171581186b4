"""Tests for ncsn_jax.evaluation.metrics against closed forms, brute force, and numbers from torch-fidelity,
pytorch-fid and clean-fid on fixed features (tests/data/ref_metrics.json, made as tests/data/README.md says)."""
import json
import logging
import pathlib

import numpy as np
import pytest
import scipy.linalg

from ncsn_jax.evaluation import metrics

REFERENCE = json.loads((pathlib.Path(__file__).parent / "data" / "ref_metrics.json").read_text())


def fixed_features(seed, n, dim, shift):
    """Correlated Gaussian features, as the reference script drew them; RandomState's stream is frozen."""
    rng = np.random.RandomState(seed)
    mixing = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    return rng.standard_normal((n, dim)) @ mixing + shift


@pytest.fixture(scope="module")
def reference_features():
    return fixed_features(1, 600, 32, 0.0), fixed_features(2, 500, 32, 0.3)


def mean_and_cov(features):
    return features.mean(axis=0), np.cov(features, rowvar=False)


def random_covariance(rng, dim):
    """A symmetric positive definite matrix with a spread of eigenvalues and random eigenvectors."""
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (rotation * rng.uniform(0.1, 3.0, dim)) @ rotation.T


def psd_sqrt(matrix):
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def eigen_frechet_distance(mu1, sigma1, mu2, sigma2):
    """tr((Σ1Σ2)^½) = tr((Σ1^½ Σ2 Σ1^½)^½): symmetric eigendecompositions only, no general sqrtm."""
    root1 = psd_sqrt(sigma1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ sigma2 @ root1), 0.0, None)).sum()
    return np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    var1, var2 = rng.uniform(0.1, 4.0, 16), rng.uniform(0.1, 4.0, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_a_gaussian_to_itself_is_zero():
    rng = np.random.default_rng(1)
    mu, sigma = rng.standard_normal(32), random_covariance(rng, 32)
    assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-10 * np.trace(sigma)


def test_frechet_distance_of_non_commuting_covariances_matches_eigendecomposition():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.standard_normal(24), rng.standard_normal(24)
    sigma1, sigma2 = random_covariance(rng, 24), random_covariance(rng, 24)
    assert np.abs(sigma1 @ sigma2 - sigma2 @ sigma1).max() > 0.1  # the naive Σ1^½Σ2^½ would be wrong here
    expected = eigen_frechet_distance(mu1, sigma1, mu2, sigma2)
    assert metrics.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-10)
    assert metrics.frechet_distance(mu2, sigma2, mu1, sigma1) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_pytorch_fid_and_torch_fidelity(reference_features):
    a, b = reference_features
    distance = metrics.frechet_distance(*mean_and_cov(a), *mean_and_cov(b))
    assert distance == pytest.approx(REFERENCE["fd_full_pytorch_fid"], rel=1e-10)
    assert distance == pytest.approx(REFERENCE["fd_full_torch_fidelity"], rel=1e-10)


def test_frechet_distance_of_rank_deficient_covariances_is_finite_and_correct(reference_features):
    a, b = reference_features
    stats1, stats2 = mean_and_cov(a[:20]), mean_and_cov(b[:25])  # 20 and 25 samples of 32 dimensions
    assert np.linalg.matrix_rank(stats1[1]) < 32
    distance = metrics.frechet_distance(*stats1, *stats2)
    assert np.isfinite(distance)
    assert distance == pytest.approx(eigen_frechet_distance(*stats1, *stats2), rel=1e-7)
    assert distance == pytest.approx(REFERENCE["fd_rank_deficient_pytorch_fid"], rel=1e-7)


def test_frechet_distance_retries_a_singular_product_with_the_eps_offset(monkeypatch, caplog):
    # scipy < 1.16 returned inf/nan for many singular products; later versions rarely do, so the first
    # square root is made non-finite here to exercise the fallback.
    real_sqrtm, calls = scipy.linalg.sqrtm, []

    def singular_first(matrix):
        calls.append(matrix)
        return np.full(matrix.shape, np.inf) if len(calls) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(scipy.linalg, "sqrtm", singular_first)
    var1, var2, eps = np.array([1.0, 0.0, 2.0]), np.array([0.0, 3.0, 0.5]), 1e-2
    with caplog.at_level(logging.WARNING):
        distance = metrics.frechet_distance(np.zeros(3), np.diag(var1), np.ones(3), np.diag(var2), eps=eps)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], np.diag((var1 + eps) * (var2 + eps)))
    expected = 3.0 + np.sum(var1 + var2) - 2.0 * np.sum(np.sqrt((var1 + eps) * (var2 + eps)))
    assert distance == pytest.approx(expected, rel=1e-12)
    assert "singular product" in caplog.text and "0.01" in caplog.text


def test_frechet_distance_refuses_bad_shapes_and_non_psd_covariances():
    with pytest.raises(ValueError, match=r"shapes \(3,\) and \(4,\)"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"sigma2 must be \(3, 3\).*\(3, 2\)"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.ones((3, 2)))
    with pytest.raises(ValueError, match="imaginary component of 1 "):
        metrics.frechet_distance(np.zeros(2), np.diag([-1.0, 1.0]), np.zeros(2), np.eye(2))


@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_feature_statistics_over_batches_equal_numpy_on_the_concatenation(offset):
    rng = np.random.default_rng(3)
    features = offset + rng.standard_normal((300, 8)) @ rng.standard_normal((8, 8))
    stats = metrics.FeatureStatistics()
    for batch in np.split(features, [7, 8, 150]):  # uneven batches, one of a single vector
        stats.update(batch.astype(np.float64))
    mu, sigma = stats.mean_and_covariance()
    assert stats.count == 300
    np.testing.assert_allclose(mu, features.mean(axis=0), rtol=1e-15, atol=1e-10)
    # Without the shift, (Σxxᵀ − nμμᵀ)/(n − 1) at offset 1e6 is off by about 2e-3 here.
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=0, atol=1e-10)


def test_feature_statistics_refuses_too_few_vectors_and_mixed_dimensions():
    stats = metrics.FeatureStatistics()
    stats.update(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="at least 2 feature vectors, got 1"):
        stats.mean_and_covariance()
    with pytest.raises(ValueError, match="D = 5, the earlier batches D = 4"):
        stats.update(np.zeros((3, 5)))


def test_statistics_files_round_trip_in_the_ttur_format(tmp_path):
    rng = np.random.default_rng(4)
    mu, sigma = rng.standard_normal(6).astype(np.float32), random_covariance(rng, 6)
    path = tmp_path / "stats"  # no suffix: the file is written exactly there
    metrics.save_statistics(path, mu, sigma)
    with np.load(path) as data:  # what pytorch-fid reads: keys mu and sigma
        assert sorted(data.files) == ["mu", "sigma"]
    loaded_mu, loaded_sigma = metrics.load_statistics(path)
    assert loaded_mu.dtype == loaded_sigma.dtype == np.float64
    np.testing.assert_array_equal(loaded_mu, mu)
    np.testing.assert_array_equal(loaded_sigma, sigma)


def test_load_statistics_names_the_file_and_the_problem(tmp_path):
    bad = {
        "keys.npz": ("lacks sigma", lambda p: np.savez(p, mu=np.zeros(3), cov=np.eye(3))),
        "shapes.npz": (r"mu of shape \(3,\) and sigma of shape \(4, 4\)",
                       lambda p: np.savez(p, mu=np.zeros(3), sigma=np.eye(4))),
        "array.npy": ("single array", lambda p: np.save(p, np.zeros(3))),
        "text.npz": ("not a statistics .npz", lambda p: p.write_text("mu, sigma")),
    }
    for name, (message, write) in bad.items():
        write(tmp_path / name)
        with pytest.raises(ValueError, match=f"{name}.*{message}"):
            metrics.load_statistics(tmp_path / name)


def test_inception_score_of_identical_predictions_is_one():
    assert metrics.inception_score(np.zeros((100, 10))) == pytest.approx((1.0, 0.0), abs=1e-12)
    logits = np.tile(np.random.default_rng(5).standard_normal(10), (100, 1))  # confident or not, all alike
    assert metrics.inception_score(logits)[0] == pytest.approx(1.0, abs=1e-12)


def test_inception_score_of_confident_evenly_spread_predictions_is_the_class_count():
    # 1,000 samples cycling through 10 classes: each split of 100 holds every class 10 times.
    logits = 50.0 * np.eye(10)[np.arange(1000) % 10]
    mean, std = metrics.inception_score(logits, num_splits=10)
    assert mean == pytest.approx(10.0, rel=1e-9)
    assert std < 1e-9


def test_inception_score_matches_torch_fidelity():
    logits = 3.0 * np.random.RandomState(3).standard_normal((1000, 10))
    np.testing.assert_allclose(metrics.inception_score(logits, 10), REFERENCE["is_torch_fidelity_10_splits"],
                               rtol=1e-10)


def test_inception_score_refuses_fewer_samples_than_splits():
    with pytest.raises(ValueError, match=r"num_splits must be in \[1, N = 5\]"):
        metrics.inception_score(np.zeros((5, 10)), num_splits=10)


def brute_force_mmd2(a, b):
    """The unbiased MMD² by its definition, one kernel evaluation at a time."""
    m, dim = a.shape

    def kernel(x, y):
        return (np.dot(x, y) / dim + 1.0) ** 3

    within = sum(kernel(a[i], a[j]) + kernel(b[i], b[j]) for i in range(m) for j in range(m) if i != j)
    across = sum(kernel(a[i], b[j]) for i in range(m) for j in range(m))
    return within / (m * (m - 1)) - 2.0 * across / m**2


def test_kid_of_whole_small_sets_is_the_unbiased_mmd2():
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((7, 5)), rng.standard_normal((9, 5)) + 0.5
    mean, std = metrics.kernel_inception_distance(a, b, num_subsets=1, subset_size=7, seed=0)
    # The rows that subset drew: all of `a` in some order, then 7 of the 9 rows of `b`.
    draws = np.random.RandomState(0)
    rows_a, rows_b = draws.choice(7, 7, replace=False), draws.choice(9, 7, replace=False)
    assert mean == pytest.approx(brute_force_mmd2(a[rows_a], b[rows_b]), rel=1e-12)
    assert std == 0.0


def test_kid_of_one_distribution_is_near_zero_and_of_shifted_ones_clearly_positive():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((1000, 16)), rng.standard_normal((1000, 16))
    same_mean, same_std = metrics.kernel_inception_distance(a, b, num_subsets=20, subset_size=200)
    shifted_mean, shifted_std = metrics.kernel_inception_distance(a, b + 0.5, num_subsets=20, subset_size=200)
    assert abs(same_mean) < same_std
    assert shifted_mean > 10 * shifted_std
    assert shifted_mean > 100 * abs(same_mean)


def test_kid_matches_torch_fidelity_subsets_and_clean_fid_estimator(reference_features):
    a, b = reference_features
    # torch-fidelity draws subsets as this function does: with its rng_seed as seed, the same subsets.
    np.testing.assert_allclose(
        metrics.kernel_inception_distance(a, b, num_subsets=10, subset_size=200, seed=2020),
        REFERENCE["kid_torch_fidelity_10x200_seed2020"], rtol=1e-10,
    )
    # One subset of every feature (subset_size clipped to 500): clean-fid's estimator, no sampling left.
    mean, std = metrics.kernel_inception_distance(a[:500], b, num_subsets=1, subset_size=1000)
    assert mean == pytest.approx(REFERENCE["kid_clean_fid_full_500"], rel=1e-10)
    assert std == 0.0


def test_kid_refuses_mismatched_features_and_tiny_subsets():
    with pytest.raises(ValueError, match=r"one D, got shapes \(10, 3\) and \(10, 4\)"):
        metrics.kernel_inception_distance(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="at least 2 features per subset, got subset size 1"):
        metrics.kernel_inception_distance(np.zeros((1, 3)), np.zeros((10, 3)))
