"""The samplers beyond the paper's (cas, pc, ode, ancestral, dpm_solver_2m_sde, edm), the method registry,
the sub-ladder and the ρ-schedule, against exact scores: a Gaussian mixture whose noised score is known in
closed form (tests/gaussian_mixture.py), data at one point, and Gaussian data, whose samplers' moments and
probability flow are known in closed form."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from configs import default, mnist
from ncsn_jax import config_checks, schedule
from ncsn_jax.sampling import diffusion, langevin, methods, sde
from tests import gaussian_mixture
from tests.gaussian_mixture import BETWEEN_MODES, MEANS, STDS, WEIGHTS

SHAPE = (1000, *gaussian_mixture.IMAGE_SHAPE)


def _geometric(sigma_begin, sigma_end, num_levels):
    return np.exp(np.linspace(np.log(sigma_begin), np.log(sigma_end), num_levels)).astype(np.float32)


def settings(**overrides):
    """The shipped default sampling settings, with T = 1, ε = 1e-5, batches of 8 and `overrides`."""
    values = default.get_default_config().sampling.to_dict()
    # A new ConfigDict: a value of another type than the default's (which update() refuses) reaches the checks.
    return ml_collections.ConfigDict({**values, "n_steps_each": 1, "step_lr": 1e-5, "batch_size": 8, **overrides})


# Each method on a 60-level ladder from σ1 = 50 (far above the modes' distance) to σL = 0.01, with ε by
# technique 4 for its T; the denoised samples should be the data, up to σL²/s² ≈ 4e-4 of each spread.
LADDER = _geometric(50.0, 0.01, 60)
GAMMA = float(LADDER[0] / LADDER[1])


@pytest.mark.parametrize("method, steps", [("cas", 1), ("pc", 1), ("ode", 1)])  # ald: tests/test_sampling.py
def test_each_method_samples_the_mixture(method, steps):
    config = settings(method=method, n_steps_each=steps, step_lr=schedule.langevin_step_size(GAMMA, 0.01, steps))
    config_checks.check_sampling(config, LADDER)
    x_init = methods.initial_state(method, jax.random.key(0), SHAPE, LADDER[0])
    levels, epsilon = methods.ladder_and_step_lr(jnp.asarray(LADDER), config)
    x = np.asarray(methods.run(gaussian_mixture.score, jax.random.key(1), x_init, levels, epsilon, config))
    x = x.ravel()
    left, right = x[x < BETWEEN_MODES], x[x >= BETWEEN_MODES]
    # Each sampler's own bias on this coarse ladder, as measured: weights within 0.025 (the ode's 0.001),
    # means within 0.045, the spreads within 8% (pc, and ald at T = 10, wider; cas narrower). A wrong noise scale or
    # step would be far off.
    assert abs(left.size / x.size - WEIGHTS[0]) < 0.03
    np.testing.assert_allclose([left.mean(), right.mean()], MEANS, atol=0.06)
    np.testing.assert_allclose([left.std(), right.std()], STDS, rtol=0.1)
    assert stats.kstest(x, gaussian_mixture.cdf).statistic < 0.04


# The settings docs/samplers.md recommends for the diffusion literature's samplers on ρ-schedules.
RECOMMENDED = {
    "ancestral": {"schedule": "rho", "num_levels": 48},
    "dpm_solver_2m_sde": {"schedule": "rho", "num_levels": 32, "eta": 4.0},
    "edm": {"schedule": "rho", "num_levels": 24, "churn": 40.0, "churn_min_sigma": 0.0, "churn_max_sigma": 1000.0,
            "churn_noise": 1.0},
}
# What the paper's sampler (ald, T = 5, technique 4's ε) meets on LADDER, as measured: the left mode's weight
# within 0.031, the modes' means within 0.007, their spreads within 11%, a KS distance of 0.046.
ALDS_TOLERANCES = {"weight": 0.035, "means": 0.06, "spreads": 0.12, "ks": 0.05}


def _mixture_errors(config):
    """The errors of 1,000 images of `config`'s sampler on LADDER against the mixture: the left weight's, the
    largest of the means', the largest relative of the spreads', and the KS distance."""
    config_checks.check_sampling(config, LADDER)
    x_init = methods.initial_state(config.method, jax.random.key(0), SHAPE, LADDER[0])
    levels, epsilon = methods.ladder_and_step_lr(jnp.asarray(LADDER), config)
    x = np.asarray(methods.run(gaussian_mixture.score, jax.random.key(1), x_init, levels, epsilon, config)).ravel()
    left, right = x[x < BETWEEN_MODES], x[x >= BETWEEN_MODES]
    return {"weight": abs(left.size / x.size - WEIGHTS[0]),
            "means": float(np.max(np.abs([left.mean() - MEANS[0], right.mean() - MEANS[1]]))),
            "spreads": float(np.max(np.abs([left.std() / STDS[0] - 1, right.std() / STDS[1] - 1]))),
            "ks": stats.kstest(x, gaussian_mixture.cdf).statistic}


def test_alds_tolerances_on_the_mixture_are_what_it_meets():
    config = settings(method="ald", n_steps_each=5, step_lr=schedule.langevin_step_size(GAMMA, 0.01, 5))
    errors = _mixture_errors(config)
    assert all(errors[name] <= bound for name, bound in ALDS_TOLERANCES.items()), errors


@pytest.mark.parametrize("method", RECOMMENDED)
def test_recommended_diffusion_settings_sample_the_mixture_within_alds_tolerances(method):
    errors = _mixture_errors(settings(method=method, **RECOMMENDED[method]))
    assert all(errors[name] <= bound for name, bound in ALDS_TOLERANCES.items()), errors


def test_consistent_sampling_keeps_the_noise_on_the_ladder():
    """Data at one point: after each CAS step the state is that point plus noise of the next level."""
    point, tiny = 0.3, 1e-4
    sigmas = _geometric(5.0, 0.05, 8)
    n_steps_each, step_lr = 2, 0.6 * 0.05**2
    score_fn = lambda x, sigma: -(x - point) / (tiny**2 + sigma.reshape(-1, 1, 1, 1)**2)
    x_init = point + langevin.prior_init(jax.random.key(0), (4000, 4, 4, 1), sigmas[0])
    out = langevin.consistent_annealed_sampling(score_fn, jax.random.key(1), x_init, sigmas, n_steps_each, step_lr,
                                                denoise=False, keep_every=1)
    levels = np.repeat(sigmas.astype(np.float64), n_steps_each)
    expected = np.append(levels[1:], (1 - step_lr / 0.05**2) * 0.05)  # the last step adds no noise
    spread = np.asarray(out.intermediates, np.float64).reshape(len(levels), -1).std(axis=1)
    np.testing.assert_allclose(spread, expected, rtol=0.02)
    # Langevin dynamics at the same step sizes does not: its noise lags the ladder (technique 4's concern).
    ald = langevin.annealed_langevin_dynamics(score_fn, jax.random.key(1), x_init, sigmas, n_steps_each, step_lr,
                                              denoise=False, keep_every=1)
    lagging = np.asarray(ald.intermediates, np.float64).reshape(len(levels), -1).std(axis=1)
    assert np.all(lagging[:-1] > 1.1 * expected[:-1])


def test_consistent_inpainting_keeps_known_pixels_and_follows_the_ladder():
    point, tiny = 0.3, 1e-4
    sigmas = _geometric(5.0, 0.05, 8)
    step_lr = 0.6 * 0.05**2
    score_fn = lambda x, sigma: -(x - point) / (tiny**2 + sigma.reshape(-1, 1, 1, 1)**2)
    shape = (4000, 4, 4, 1)
    reference = np.full(shape, 0.9, np.float32)
    mask = np.zeros((4, 4, 1), bool)
    mask[:, :2] = True
    x_init = point + langevin.prior_init(jax.random.key(0), shape, sigmas[0])
    out = langevin.consistent_annealed_inpainting(score_fn, jax.random.key(1), x_init, reference, mask, sigmas, 1,
                                                  step_lr, denoise=True, keep_every=1)
    known = np.broadcast_to(mask, shape)
    np.testing.assert_array_equal(np.asarray(out.samples)[known], reference[known])
    unknown = np.asarray(out.intermediates)[:, ~known] - point
    np.testing.assert_allclose(unknown.std(axis=1)[:-1], sigmas[1:], rtol=0.02)


def test_the_ode_maps_the_prior_to_the_data_at_second_order():
    """For data N(μ, s²) the flow is x(σ) = μ + (x(σ1) − μ)·√((s² + σ²)/(s² + σ1²)), pointwise."""
    mu, s = 0.4, 0.2
    score_fn = lambda x, sigma: -(x - mu) / (s**2 + sigma.reshape(-1, 1, 1, 1)**2)
    x_init = langevin.prior_init(jax.random.key(0), (64, 4, 4, 1), 10.0)
    errors = []
    for num_levels in (11, 21, 41):
        sigmas = _geometric(10.0, 0.01, num_levels)
        x = sde.probability_flow(score_fn, x_init, sigmas, denoise=False).samples
        exact = mu + (x_init - mu) * np.sqrt((s**2 + 0.01**2) / (s**2 + 10.0**2))
        errors.append(float(jnp.max(jnp.abs(x - exact))))
    assert errors[-1] < 5e-3, errors  # 1.5% of the data's spread at 41 levels
    # Halving every step divides the error by about 4: Heun's method is second order.
    assert 3.0 < errors[0] / errors[1] < 5.5 and 3.0 < errors[1] / errors[2] < 5.5, errors
    # The denoising step on top is Tweedie's mean, μ + (x − μ)·s²/(s² + σL²).
    denoised = sde.probability_flow(score_fn, x_init, sigmas, denoise=True).samples
    np.testing.assert_allclose(denoised, mu + (x - mu) * s**2 / (s**2 + 0.01**2), rtol=1e-5, atol=1e-6)


def test_predictor_corrector_steps_follow_the_reverse_diffusion_and_snr_rules():
    """With a constant score c, every level moves x by (σ_i² − σ_{i+1}²)·c plus its corrector's α·c."""
    c = 0.5
    sigmas = _geometric(2.0, 0.5, 3)
    score_fn = lambda x, sigma: jnp.full_like(x, c)
    x_init = jnp.zeros((2, 8, 8, 1))
    predictor_only = sde.predictor_corrector(score_fn, jax.random.key(1), x_init, sigmas, 0, 0.16)
    # The predictor's mean after the last level: Σ(σ_i² − σ_{i+1}²)·c = σ1²·c, plus the noise of the levels
    # before it: σ1² − σL² in all, so the mean of many pixels is σ1²·c and their variance σ1² − σL².
    pixels = np.asarray(sde.predictor_corrector(
        score_fn, jax.random.key(2), jnp.zeros((4000, 8, 8, 1)), sigmas, 0, 0.16).samples).ravel()
    assert abs(pixels.mean() - 4.0 * c) < 0.02
    assert abs(pixels.var() - (4.0 - 0.25)) < 0.05
    assert predictor_only.samples.shape == x_init.shape
    # One corrector step of size α = 2(r‖z‖/‖c‖)² at each level adds α·c to the mean: with 64 pixels of
    # standard noise ‖z‖² ≈ 64 = ‖c‖²/c², so α ≈ 2r²/c² (per example).
    with_corrector = np.asarray(sde.predictor_corrector(
        score_fn, jax.random.key(2), jnp.zeros((4000, 8, 8, 1)), sigmas, 1, 0.16).samples)
    alpha = 2 * 0.16**2 / c**2
    assert abs(with_corrector.mean() - (4.0 * c + 3 * alpha * c)) < 0.02


def test_sub_ladder_keeps_both_ends_and_every_kth_level():
    np.testing.assert_array_equal(methods.sub_ladder_indices(95, 1), np.arange(95))
    np.testing.assert_array_equal(methods.sub_ladder_indices(95, 2), np.arange(0, 95, 2))
    four = methods.sub_ladder_indices(95, 4)
    assert len(four) == 25 and four[0] == 0 and four[-1] == 94 and set(np.diff(four)) <= {3, 4}
    # ε is technique 4's for the sub-ladder: the ε whose variance ratio s_T²/σ² is closest to 1 there.
    config = mnist.get_config()
    sigmas = schedule.geometric_sigmas(config.model.sigma_begin, config.model.sigma_end, config.model.num_scales)
    sub = settings(ladder_stride=2, n_steps_each=5, step_lr=config.sampling.step_lr)
    levels = np.asarray(methods.ladder(jnp.asarray(sigmas), sub), np.float64)
    np.testing.assert_allclose(levels, sigmas[::2], rtol=1e-6)
    gamma = (levels[0] / levels[-1])**(1 / (len(levels) - 1))
    epsilon = methods.step_lr(jnp.asarray(sigmas), sub)
    ratio = lambda e: float(schedule.langevin_variance_ratio(e, gamma, levels[-1], 5))
    assert ratio(epsilon) < min(ratio(0.98 * epsilon), ratio(1.02 * epsilon), ratio(config.sampling.step_lr))


@pytest.mark.parametrize("method, stride, corrector_steps, evaluations, schedule", [
    ("ald", 1, 1, 95 * 5 + 1, {}), ("cas", 2, 1, 48 * 5 + 1, {}), ("pc", 2, 1, 48 * 2, {}), ("pc", 1, 0, 95, {}),
    ("ode", 4, 1, 2 * 24 + 1, {}), ("ode", 1, 1, 2 * 9 + 1, {"schedule": "rho", "num_levels": 10}),
    ("ancestral", 1, 1, 95, {}), ("ancestral", 1, 1, 12, {"schedule": "rho", "num_levels": 12}),
    ("ancestral", 1, 1, 11, {"schedule": "rho", "num_levels": 12, "denoise": False}),
    ("dpm_solver_2m_sde", 3, 1, 33, {}), ("dpm_solver_2m_sde", 1, 1, 24, {"schedule": "rho", "num_levels": 24}),
    ("edm", 1, 1, 2 * 11 + 1, {"schedule": "rho", "num_levels": 12}), ("edm", 2, 1, 2 * 47 + 1, {}),
])
def test_score_evaluations_are_counted_as_the_sampler_makes_them(method, stride, corrector_steps, evaluations,
                                                                  schedule):
    config = settings(method=method, ladder_stride=stride, corrector_steps=corrector_steps, n_steps_each=5,
                      step_lr=1e-4, **schedule)
    assert methods.score_evaluations(95, config) == evaluations
    calls = []

    def counting_score(x, sigma):
        jax.debug.callback(lambda: calls.append(1))
        return -x / (1.0 + sigma.reshape(-1, 1, 1, 1)**2)

    sigmas = jnp.asarray(_geometric(10.0, 0.1, 95))
    x_init = methods.initial_state(method, jax.random.key(0), (2, 2, 2, 1), sigmas[0])
    levels, epsilon = methods.ladder_and_step_lr(sigmas, config)
    jax.block_until_ready(methods.run(counting_score, jax.random.key(1), x_init, levels, epsilon, config))
    jax.effects_barrier()
    assert len(calls) == evaluations


def test_runs_of_other_sampler_settings_are_named_apart():
    # --mode sample and the notebook name their output with these suffixes: two settings that draw different images must not
    # share a file; the paper's sampler on the whole ladder keeps the plain name (whatever its T and ε).
    runs = [settings(method="ald", ladder_stride=2), settings(method="ald", n_steps_each=5, ladder_stride=2),
            settings(method="cas", step_lr=2.9e-5), settings(method="cas", step_lr=5.8e-5),
            settings(method="cas", n_steps_each=3, ladder_stride=3),
            settings(method="cas", n_steps_each=2, ladder_stride=3),
            settings(method="pc", corrector_steps=0), settings(method="pc", snr=0.08), settings(method="ode"),
            settings(method="ode", ladder_stride=2), settings(method="ode", denoise=False),
            settings(method="ode", schedule="rho"), settings(method="ancestral"),
            settings(method="ancestral", schedule="rho"), settings(method="ancestral", schedule="rho", num_levels=12),
            settings(method="ancestral", schedule="rho", rho=3.0), settings(method="dpm_solver_2m_sde"),
            settings(method="edm"), settings(method="edm", churn=0.0), settings(method="edm", churn_min_sigma=0.5),
            settings(method="edm", churn_max_sigma=1.0), settings(method="edm", churn_noise=1.007),
            settings(method="dpm_solver_2m_sde", eta=1.0)]
    labels = [methods.file_name_suffix(run) for run in runs]
    assert len(set(labels)) == len(runs)
    assert all(label and "/" not in label and " " not in label for label in labels)
    assert methods.file_name_suffix(settings(method="ald", n_steps_each=5, step_lr=6.2e-6)) == ""


def test_methods_without_an_inpainting_program_are_refused_before_sampling():
    x = jnp.zeros((2, 4, 4, 1))
    with pytest.raises(ValueError, match="pc does not inpaint; the methods that do: ald, cas, ancestral, "):
        methods.inpaint(None, jax.random.key(0), x, x, jnp.ones((4, 4, 1)), jnp.asarray(LADDER),
                        settings(method="pc"))


def _point_score(point, tiny=1e-4):
    """The exact score of data at one point (a Gaussian of spread `tiny`)."""
    return lambda x, sigma: -(x - point) / (tiny**2 + sigma.reshape(-1, 1, 1, 1)**2)


@pytest.mark.parametrize("sampler", [
    diffusion.ancestral, diffusion.dpm_solver_2m_sde,
    functools.partial(diffusion.edm, churn=40.0, churn_min_sigma=0.0, churn_max_sigma=100.0, churn_noise=1.0),
    functools.partial(diffusion.edm, churn=0.0, churn_min_sigma=0.0, churn_max_sigma=100.0, churn_noise=1.0),
], ids=["ancestral", "dpm_solver_2m_sde", "edm", "edm_without_churn"])
def test_diffusion_samplers_keep_point_data_on_the_schedule(sampler):
    """For data at one point D(x; σ) is that point: each step must leave exactly the next level's noise, and
    the denoising step the point itself, whatever the levels (edm's churn raises σ, its Heun step is exact)."""
    point = 0.3
    sigmas = schedule.rho_sigmas(5.0, 0.05, 7, 7.0)
    x_init = point + langevin.prior_init(jax.random.key(0), (4000, 4, 4, 1), sigmas[0])
    noisy = np.asarray(sampler(_point_score(point), jax.random.key(1), x_init, sigmas, denoise=False).samples)
    np.testing.assert_allclose(noisy.std(), 0.05, rtol=0.02)
    np.testing.assert_allclose(noisy.mean(), point, atol=3 * 0.05 / np.sqrt(noisy.size))
    clean = np.asarray(sampler(_point_score(point), jax.random.key(1), x_init, sigmas, denoise=True).samples)
    np.testing.assert_allclose(clean, point, atol=1e-3)


def _gaussian_moments_after_solver(mu, s, sigmas, second_order, eta=1.0):
    """Mean and variance of each pixel after ancestral (or SDE-DPM-Solver++(2M) at noise η) steps on data
    N(μ, s²), from the prior N(0, σ_0²), without denoising, by the exact linear recursion of the steps: with
    e = x − μ and the exact D − μ = c·e, c = s²/(s² + σ²), a step is e' = A·e + B·e_previous + noise of
    variance σ'²·(1 − (σ'/σ)^(2η)), where k = (σ'/σ)^(1+η)."""
    sigmas = np.asarray(sigmas, np.float64)
    mean, variance = -mu, sigmas[0]**2  # of e
    previous_mean = previous_variance = covariance = 0.0  # of e_previous, and Cov(e, e_previous)
    previous_h = 1.0
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        k, c, h = (sigma_next / sigma)**(1 + eta), s**2 / (s**2 + sigma**2), np.log(sigma / sigma_next)
        r = 0.5 * h / previous_h if (second_order and i > 0) else 0.0
        c_previous = s**2 / (s**2 + sigmas[i - 1]**2) if i > 0 else 0.0
        a, b = k + (1 - k) * c * (1 + r), -(1 - k) * r * c_previous
        new_mean = a * mean + b * previous_mean
        new_variance = (a**2 * variance + b**2 * previous_variance + 2 * a * b * covariance
                        + sigma_next**2 * (1 - (sigma_next / sigma)**(2 * eta)))
        covariance = a * variance + b * covariance
        previous_mean, previous_variance, mean, variance, previous_h = mean, variance, new_mean, new_variance, h
    return mu + mean, variance


@pytest.mark.parametrize("sampler, second_order, eta", [
    (diffusion.ancestral, False, 1.0), (diffusion.dpm_solver_2m_sde, True, 1.0),
    (functools.partial(diffusion.dpm_solver_2m_sde, eta=4.0), True, 4.0),
    (functools.partial(diffusion.dpm_solver_2m_sde, eta=0.0), True, 0.0),
], ids=["ancestral", "dpm_solver_2m_sde", "dpm_solver_2m_sde_eta4", "dpm_solver_2m_ode"])
def test_ancestral_and_dpm_solver_moments_on_gaussian_data_are_the_closed_forms(sampler, second_order, eta):
    mu, s = 0.4, 0.2
    score_fn = lambda x, sigma: -(x - mu) / (s**2 + sigma.reshape(-1, 1, 1, 1)**2)
    sigmas = schedule.rho_sigmas(10.0, 0.01, 8, 7.0)
    x_init = langevin.prior_init(jax.random.key(0), (4000, 8, 8, 1), sigmas[0])
    x = np.asarray(sampler(score_fn, jax.random.key(1), x_init, sigmas, denoise=False).samples, np.float64)
    mean, variance = _gaussian_moments_after_solver(mu, s, sigmas, second_order, eta)
    np.testing.assert_allclose(x.mean(), mean, atol=4 * np.sqrt(variance / x.size))
    np.testing.assert_allclose(x.var(), variance, rtol=0.01)

    # By the closed forms, the variance's error against the data's s² + σL² shrinks at first order for the
    # ancestral steps and at second order with the 2M correction (32 → 64 levels), which is always closer.
    def error(count, order):
        levels = np.asarray(schedule.rho_sigmas(10.0, 0.01, count, 7.0))
        return abs(_gaussian_moments_after_solver(mu, s, levels, order)[1] - (s**2 + 0.01**2))

    assert 1.6 < error(32, False) / error(64, False) < 2.4
    assert 3.5 < error(32, True) / error(64, True) < 5.0
    assert all(error(count, True) < 0.5 * error(count, False) for count in (6, 8, 12, 24, 48))


def test_edm_without_churn_is_heuns_method_on_the_probability_flow():
    """For data N(μ, s²) the flow is x(σ) = μ + (x(σ1) − μ)·√((s² + σ²)/(s² + σ1²)): edm with S_churn = 0
    follows it at second order, as `sde.probability_flow` on the same levels."""
    mu, s = 0.4, 0.2
    score_fn = lambda x, sigma: -(x - mu) / (s**2 + sigma.reshape(-1, 1, 1, 1)**2)
    x_init = langevin.prior_init(jax.random.key(0), (64, 4, 4, 1), 10.0)
    errors = []
    for num_levels in (11, 21, 41):
        sigmas = schedule.rho_sigmas(10.0, 0.01, num_levels, 7.0)
        x = diffusion.edm(score_fn, jax.random.key(1), x_init, sigmas, churn=0.0, churn_min_sigma=0.0,
                          churn_max_sigma=100.0, churn_noise=1.0, denoise=False).samples
        np.testing.assert_allclose(x, sde.probability_flow(score_fn, x_init, sigmas, denoise=False).samples,
                                   rtol=1e-4, atol=1e-5)
        exact = mu + (x_init - mu) * np.sqrt((s**2 + 0.01**2) / (s**2 + 10.0**2))
        errors.append(float(jnp.max(jnp.abs(x - exact))))
    assert 3.0 < errors[0] / errors[1] < 5.5 and 3.0 < errors[1] / errors[2] < 5.5, errors


def test_edm_churns_only_inside_its_range():
    """Churning adds noise: outside [S_tmin, S_tmax] edm is the deterministic flow, inside it is not."""
    mu, s = 0.4, 0.2
    score_fn = lambda x, sigma: -(x - mu) / (s**2 + sigma.reshape(-1, 1, 1, 1)**2)
    sigmas = schedule.rho_sigmas(10.0, 0.01, 12, 7.0)
    x_init = langevin.prior_init(jax.random.key(0), (16, 4, 4, 1), 10.0)
    flow = diffusion.edm(score_fn, jax.random.key(1), x_init, sigmas, 0.0, 0.0, 100.0, 1.0).samples
    outside = diffusion.edm(score_fn, jax.random.key(1), x_init, sigmas, 40.0, 20.0, 100.0, 1.0).samples
    inside = diffusion.edm(score_fn, jax.random.key(1), x_init, sigmas, 40.0, 0.0, 100.0, 1.0).samples
    np.testing.assert_array_equal(outside, flow)
    assert float(jnp.max(jnp.abs(inside - flow))) > 0.05


@pytest.mark.parametrize("method", ["ancestral", "dpm_solver_2m_sde", "edm"])
def test_diffusion_inpainting_keeps_known_pixels_and_samples_the_rest(method):
    """The known pixels end at the reference; the others, of data at one point, at that point."""
    point = 0.3
    config = settings(method=method, schedule="rho", num_levels=8)
    sigmas = jnp.asarray(_geometric(5.0, 0.05, 30))
    shape = (200, 4, 4, 1)
    reference = np.full(shape, 0.9, np.float32)
    mask = np.zeros((4, 4, 1), bool)
    mask[:, :2] = True
    x_init = methods.initial_state(method, jax.random.key(0), shape, sigmas[0])
    out = np.asarray(methods.inpaint(_point_score(point), jax.random.key(1), x_init, reference, mask, sigmas, config))
    known = np.broadcast_to(mask, shape)
    np.testing.assert_array_equal(out[known], reference[known])
    np.testing.assert_allclose(out[~known], point, atol=1e-3)


def test_the_rho_schedule_runs_between_the_trained_ends():
    sigmas = jnp.asarray(_geometric(15.83, 0.01, 95))
    config = settings(method="ancestral", schedule="rho", num_levels=24, rho=7.0)
    levels = np.asarray(methods.ladder(sigmas, config))
    assert levels.shape == (24,) and levels[0] == sigmas[0] and levels[-1] == sigmas[-1]
    assert np.all(np.diff(levels) < 0)
    assert methods.num_sampled_levels(95, config) == 24
