"""Tests for ncsn_jax.schedule against the paper's configs, closed forms and brute force."""

import math

import jax
import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import pdist

from ncsn_jax import schedule

# The released configs: image shape, σ1 (`sigma_begin`), L (`num_scales`), T (`n_steps_each`)
# and ε (`step_lr`); σL = 0.01 throughout.
PAPER_CONFIGS = {
    "cifar10": dict(shape=(32, 32, 3), sigma_begin=50.0, num_scales=232, n_steps_each=5,
                    step_lr=6.2e-6),
    "celeba": dict(shape=(64, 64, 3), sigma_begin=90.0, num_scales=500, n_steps_each=5,
                   step_lr=3.3e-6),
    "church": dict(shape=(96, 96, 3), sigma_begin=140.0, num_scales=788, n_steps_each=4,
                   step_lr=4.9e-6),
    "bedroom": dict(shape=(128, 128, 3), sigma_begin=190.0, num_scales=1086, n_steps_each=3,
                    step_lr=1.8e-6),
    "ffhq": dict(shape=(256, 256, 3), sigma_begin=348.0, num_scales=2311, n_steps_each=3,
                 step_lr=9e-7),
}
SIGMA_END = 0.01
# The overlap C that the released configs correspond to (the paper's text says 0.5).
CONFIG_TARGET = 0.567


def ladder_ratio(config):
    """The paper ladder's actual γ = (σ1/σL)^(1/(L−1))."""
    return (config["sigma_begin"] / SIGMA_END) ** (1.0 / (config["num_scales"] - 1))


def test_geometric_sigmas_reproduces_cifar10_table():
    sigmas = schedule.geometric_sigmas(50.0, SIGMA_END, 232)
    assert sigmas.dtype == np.float32
    assert sigmas.shape == (232,)
    np.testing.assert_array_equal(sigmas[:3], np.float32([50.0, 48.190025, 46.445568]))
    assert sigmas[-1] == np.float32(0.01)
    assert np.all(np.diff(sigmas) < 0)
    # Geometric: every ratio is the ladder's γ, up to float32 rounding of the levels.
    np.testing.assert_allclose(sigmas[:-1] / sigmas[1:], 5000.0 ** (1 / 231), rtol=1e-6)


@pytest.mark.parametrize("sigma_begin, sigma_end, num_scales", [
    (0.01, 50.0, 10),  # ascending
    (50.0, 0.0, 10),
    (50.0, 50.0, 10),
    (50.0, 0.01, 1),
])
def test_geometric_sigmas_rejects_bad_ladders(sigma_begin, sigma_end, num_scales):
    with pytest.raises(ValueError):
        schedule.geometric_sigmas(sigma_begin, sigma_end, num_scales)


def test_rho_sigmas_spaces_the_levels_evenly_in_sigma_to_the_one_over_rho():
    levels = np.asarray(schedule.rho_sigmas(80.0, 0.002, 18, 7.0), np.float64)
    assert levels[0] == np.float32(80.0) and levels[-1] == np.float32(0.002) and np.all(np.diff(levels) < 0)
    np.testing.assert_allclose(np.diff(levels**(1 / 7)), (0.002**(1 / 7) - 80.0**(1 / 7)) / 17, rtol=1e-4)
    # ρ = 1 is evenly spaced in σ; a large ρ tends to the geometric ladder, evenly spaced in log σ.
    np.testing.assert_allclose(schedule.rho_sigmas(10.0, 1.0, 10, 1.0), np.linspace(10.0, 1.0, 10), rtol=1e-6)
    np.testing.assert_allclose(schedule.rho_sigmas(10.0, 0.01, 12, 1e4), schedule.geometric_sigmas(10.0, 0.01, 12),
                               rtol=2e-3)
    with pytest.raises(ValueError, match="num_levels must be at least 2"):
        schedule.rho_sigmas(10.0, 0.01, 1, 7.0)


@pytest.mark.parametrize("dim", [5, 3072, 12288, 196608])
@pytest.mark.parametrize("target", [0.2, 0.5, 0.567, 0.9])
def test_noise_scale_ratio_solves_overlap_equation(dim, target):
    gamma = schedule.noise_scale_ratio(dim, target)
    center = math.sqrt(2 * dim) * (gamma - 1)
    overlap = stats.norm.cdf(center + 3 * gamma) - stats.norm.cdf(center - 3 * gamma)
    assert gamma > 1
    assert abs(overlap - target) < 1e-9


def test_noise_scale_ratio_matches_cifar10_config():
    assert schedule.noise_scale_ratio(3072, 0.5670) == pytest.approx(1.037559, abs=1e-5)


@pytest.mark.parametrize("dim, target", [(4, 0.5), (3072, 0.0), (3072, 0.998)])
def test_noise_scale_ratio_rejects_unsolvable(dim, target):
    with pytest.raises(ValueError):
        schedule.noise_scale_ratio(dim, target)


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_num_noise_scales_matches_paper_configs(name):
    config = PAPER_CONFIGS[name]
    num_scales = schedule.num_noise_scales(
        math.prod(config["shape"]), config["sigma_begin"], SIGMA_END, target=CONFIG_TARGET)
    assert abs(num_scales - config["num_scales"]) <= 1


def test_num_noise_scales_at_papers_stated_target():
    # C = 0.5 as written in the paper gives a sparser CIFAR-10 ladder than the config's 232.
    assert schedule.num_noise_scales(3072, 50.0, SIGMA_END, target=0.5) == 219


@pytest.mark.parametrize("name", ["cifar10", "celeba", "bedroom", "ffhq"])
def test_langevin_step_size_matches_paper_configs(name):
    config = PAPER_CONFIGS[name]
    step_lr = schedule.langevin_step_size(ladder_ratio(config), SIGMA_END, config["n_steps_each"])
    assert step_lr == pytest.approx(config["step_lr"], rel=0.03)


def test_langevin_step_size_for_church_differs_from_its_config():
    config = PAPER_CONFIGS["church"]
    step_lr = schedule.langevin_step_size(ladder_ratio(config), SIGMA_END, config["n_steps_each"])
    assert step_lr == pytest.approx(2.31e-6, rel=0.01)
    assert step_lr != pytest.approx(config["step_lr"], rel=0.5)


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_langevin_step_size_minimises_variance_ratio(name):
    config = PAPER_CONFIGS[name]
    gamma, n_steps = ladder_ratio(config), config["n_steps_each"]
    step_lr = schedule.langevin_step_size(gamma, SIGMA_END, n_steps)

    def ratio_at(step_lr):
        return schedule.langevin_variance_ratio(step_lr, gamma, SIGMA_END, n_steps)

    assert ratio_at(step_lr) <= ratio_at(step_lr * (1 - 1e-3))
    assert ratio_at(step_lr) <= ratio_at(step_lr * (1 + 1e-3))


@pytest.mark.parametrize("n_steps_each", [1, 3, 5])
def test_langevin_variance_ratio_matches_variance_recursion(n_steps_each):
    # One Langevin step x ← x − (α/σ²)x + √(2α)z on N(0, σ²) data with α = εσ²/σL² maps the
    # variance ratio v to (1 − ε/σL²)²v + 2ε/σL², starting from the previous level's γ².
    gamma, sigma_end = 1.04, 0.01
    step_lrs = np.array([1e-8, 6e-6, 5e-5, 1e-4, 1.9e-4])
    a = step_lrs / sigma_end**2
    variance = np.full_like(step_lrs, gamma**2)
    for _ in range(n_steps_each):
        variance = (1 - a) ** 2 * variance + 2 * a
    np.testing.assert_allclose(
        schedule.langevin_variance_ratio(step_lrs, gamma, sigma_end, n_steps_each), variance,
        rtol=1e-12)


def test_langevin_variance_ratio_limits():
    gamma, sigma_end, n_steps = 1.04, 0.01, 5

    def ratio_at(step_lr):
        return schedule.langevin_variance_ratio(step_lr, gamma, sigma_end, n_steps)

    # No movement: the samples keep the previous level's variance γ²σ².
    assert ratio_at(1e-16) == pytest.approx(gamma**2, rel=1e-9)
    # a = 1 wipes out the start after one step: each step then yields variance 2σ².
    assert ratio_at(sigma_end**2) == pytest.approx(2.0, rel=1e-12)
    # a → 2: each step multiplies the variance by (1 − a)² → 1 and adds 2a → 4.
    assert ratio_at(2 * sigma_end**2 * (1 - 1e-9)) == pytest.approx(gamma**2 + 4 * n_steps,
                                                                    rel=1e-6)
    grid = np.linspace(0, 2 * sigma_end**2, 10_002)[1:-1]
    assert np.all(ratio_at(grid) > 1)


@pytest.mark.parametrize("step_lr", [0.0, 2e-4, -1e-6])
def test_langevin_variance_ratio_rejects_steps_outside_stable_range(step_lr):
    with pytest.raises(ValueError):
        schedule.langevin_variance_ratio(step_lr, 1.04, 0.01, 5)


@pytest.mark.parametrize("gamma, sigma_end, n_steps_each", [(1.0, 0.01, 5), (1.04, 0.0, 5),
                                                            (1.04, 0.01, 0)])
def test_langevin_step_size_rejects_bad_arguments(gamma, sigma_end, n_steps_each):
    with pytest.raises(ValueError):
        schedule.langevin_step_size(gamma, sigma_end, n_steps_each)


@pytest.mark.parametrize("shape", [
    (2, 5),
    (600, 32),  # one full block of 512 rows and a partial one
    (1300, 17),  # three blocks
    (70, 4, 4, 3),  # NHWC, flattened per image
])
def test_max_pairwise_distance_matches_brute_force(shape):
    images = np.random.default_rng(0).random(shape)
    expected = pdist(images.reshape(shape[0], -1)).max()
    assert schedule.max_pairwise_distance(images) == pytest.approx(expected, rel=1e-12)


def test_max_pairwise_distance_is_exact_where_float32_gram_is_not():
    # A large common offset with tiny differences: the float32 Gram trick's round-off
    # (≈ D·2⁻²⁴·‖x‖² ≈ 1e-3) swamps the squared distances (≈ 7e-5), so the answer rests entirely
    # on the float64 re-check.
    points = (0.5 + 1e-3 * np.random.default_rng(0).random((300, 300))).astype(np.float32)
    padded = np.zeros((512, 300), np.float32)
    padded[:300] = points
    row_max, _ = jax.device_get(schedule._row_max_sq_distances(padded, np.int32(300)))
    expected = pdist(points.astype(np.float64)).max()
    assert math.sqrt(max(row_max.max(), 0.0)) != pytest.approx(expected, rel=0.1)
    assert schedule.max_pairwise_distance(points) == pytest.approx(expected, rel=1e-12)


def test_max_pairwise_distance_black_and_white_images():
    dim = 3 * 8 * 8
    images = np.random.default_rng(0).random((50, 8, 8, 3)).astype(np.float32)
    images[17] = 0.0
    images[33] = 1.0
    assert schedule.max_pairwise_distance(images) == pytest.approx(math.sqrt(dim), rel=1e-12)


def test_max_pairwise_distance_uses_seeded_subset():
    images = np.random.default_rng(0).random((1500, 20))
    subset = np.random.default_rng(3).choice(1500, size=400, replace=False)
    expected = pdist(images[subset]).max()
    assert schedule.max_pairwise_distance(images, max_points=400, seed=3) == pytest.approx(
        expected, rel=1e-12)
    assert schedule.max_pairwise_distance(images, max_points=400, seed=4) != pytest.approx(
        expected, rel=1e-12)
    assert schedule.max_pairwise_distance(images, max_points=400, seed=3) < pdist(images).max()


@pytest.mark.parametrize("images, max_points", [
    (np.zeros((1, 4)), 10),
    (np.zeros((0, 4)), 10),
    (np.zeros((3, 0)), 10),
    (np.zeros((5, 4)), 1),
    (np.array([[0.0, 1.0], [np.nan, 0.5]]), 10),
])
def test_max_pairwise_distance_rejects_bad_input(images, max_points):
    with pytest.raises(ValueError):
        schedule.max_pairwise_distance(images, max_points=max_points)
