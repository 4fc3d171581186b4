"""The samplers beyond the paper's (cas, pc, ode), the method registry and the sub-ladder, against exact
scores: a Gaussian mixture whose noised score is known in closed form (tests/gaussian_mixture.py), and a
Gaussian whose probability flow is known."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from configs import mnist
from ncsn_jax import config_checks, schedule
from ncsn_jax.sampling import langevin, methods, sde
from tests import gaussian_mixture
from tests.gaussian_mixture import BETWEEN_MODES, MEANS, STDS, WEIGHTS

SHAPE = (1000, *gaussian_mixture.IMAGE_SHAPE)


def _geometric(sigma_begin, sigma_end, num_levels):
    return np.exp(np.linspace(np.log(sigma_begin), np.log(sigma_end), num_levels)).astype(np.float32)


def settings(**overrides):
    values = {"method": "ald", "n_steps_each": 1, "step_lr": 1e-5, "denoise": True, "ladder_stride": 1,
              "corrector_steps": 1, "snr": 0.16, "batch_size": 8}
    return ml_collections.ConfigDict({**values, **overrides})


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


@pytest.mark.parametrize("method, stride, corrector_steps, evaluations", [
    ("ald", 1, 1, 95 * 5 + 1), ("cas", 2, 1, 48 * 5 + 1), ("pc", 2, 1, 48 * 2), ("pc", 1, 0, 95),
    ("ode", 4, 1, 2 * 24 + 1),
])
def test_score_evaluations_are_counted_as_the_sampler_makes_them(method, stride, corrector_steps, evaluations):
    config = settings(method=method, ladder_stride=stride, corrector_steps=corrector_steps, n_steps_each=5,
                      step_lr=1e-4)
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
            settings(method="ode", ladder_stride=2), settings(method="ode", denoise=False)]
    labels = [methods.file_name_suffix(run) for run in runs]
    assert len(set(labels)) == len(runs)
    assert all(label and "/" not in label and " " not in label for label in labels)
    assert methods.file_name_suffix(settings(method="ald", n_steps_each=5, step_lr=6.2e-6)) == ""


def test_methods_without_an_inpainting_program_are_refused_before_sampling():
    x = jnp.zeros((2, 4, 4, 1))
    with pytest.raises(ValueError, match="pc does not inpaint; the methods that do: ald, cas"):
        methods.inpaint(None, jax.random.key(0), x, x, jnp.ones((4, 4, 1)), jnp.asarray(LADDER),
                        settings(method="pc"))
