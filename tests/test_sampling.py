"""Tests for ncsn_jax.sampling.langevin against closed forms and distributions whose score is known exactly."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ncsn_jax.sampling import langevin


def _geometric(sigma_begin, sigma_end, n_levels):
    return np.exp(np.linspace(np.log(sigma_begin), np.log(sigma_end), n_levels)).astype(np.float32)


def _gaussian_score(mu, s):
    """Exact score of N(mu, s²) convolved with N(0, σ²), per pixel; mu and s broadcast to x[0]."""
    def score_fn(x, sigma):
        sigma = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
        return -(x - mu) / (s**2 + sigma**2)
    return score_fn


def _gaussian_moments(mean0, var0, mu, s, sigmas, n_steps_each, step_lr, denoise):
    """Exact mean and variance after the sampler on N(mu, s²): every update is affine in x.

    A step is x ← a·x + b + √(2α)·z with a = 1 − α/v, b = α·mu/v, v = s² + σ², so the moments obey
    m ← a·m + b, var ← a²·var + 2α; denoising is x ← d·x + (1 − d)·mu with d = s²/(s² + σ_L²).
    """
    sigmas = np.asarray(sigmas, np.float64)
    mean, var = mean0, var0
    for sigma in sigmas:
        alpha = step_lr * (sigma / sigmas[-1])**2
        v = s**2 + sigma**2
        for _ in range(n_steps_each):
            mean = (1 - alpha / v) * mean + alpha * mu / v
            var = (1 - alpha / v)**2 * var + 2 * alpha
    if denoise:
        d = s**2 / (s**2 + sigmas[-1]**2)
        mean, var = d * mean + (1 - d) * mu, d**2 * var
    return mean, var


def _count(jaxpr, primitive=None):
    """Equations in a jaxpr and all its sub-jaxprs, or only those of one primitive."""
    n = 0
    for eqn in jaxpr.eqns:
        n += primitive is None or eqn.primitive.name == primitive
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    n += _count(sub, primitive)
    return n


def test_langevin_step_closed_form():
    rng = np.random.default_rng(0)
    x, score, noise = (rng.normal(size=(2, 4, 4, 3)).astype(np.float32) for _ in range(3))
    np.testing.assert_allclose(langevin.langevin_step(x, score, noise, 0.03),
                               x + 0.03 * score + np.sqrt(0.06) * noise, rtol=1e-6, atol=1e-6)


def test_denoise_step_closed_form():
    rng = np.random.default_rng(1)
    x, score = (rng.normal(size=(2, 4, 4, 3)).astype(np.float32) for _ in range(2))
    np.testing.assert_allclose(langevin.denoise_step(x, score, 0.01), x + 1e-4 * score, rtol=1e-6)


def test_uniform_init_is_unit_interval():
    x = langevin.uniform_init(jax.random.key(0), (64, 8, 8, 3))
    assert x.shape == (64, 8, 8, 3) and x.dtype == jnp.float32
    assert 0.0 <= float(x.min()) and float(x.max()) < 1.0
    np.testing.assert_allclose([x.mean(), x.var()], [0.5, 1 / 12], rtol=0.02)


@pytest.mark.parametrize("denoise", [False, True])
def test_gaussian_moments_match_exact_recursion(denoise):
    """Per-pixel Gaussian prior: the samples' moments follow the closed-form moment recursion."""
    rng = np.random.default_rng(2)
    mu = rng.uniform(0.2, 0.8, size=(4, 4, 2))
    s = rng.uniform(0.05, 0.3, size=(4, 4, 2))
    sigmas, n_steps_each, step_lr = _geometric(1.0, 0.05, 10), 5, 5e-4
    x_init = langevin.uniform_init(jax.random.key(0), (4000, 4, 4, 2))
    x = langevin.annealed_langevin_dynamics(
        _gaussian_score(mu, s), jax.random.key(1), x_init, sigmas, n_steps_each, step_lr,
        denoise=denoise).samples
    mean, var = _gaussian_moments(0.5, 1 / 12, mu, s, sigmas, n_steps_each, step_lr, denoise)
    # With denoising the variance is s⁴/(s² + σ_L²) < s², without it ≈ s² + σ_L².
    z = (np.asarray(x, np.float64) - mean) / np.sqrt(var)
    # 128k standardised values: standard errors 0.003 (mean) and 0.002 (std).
    assert abs(z.mean()) < 0.015
    assert abs(z.std() - 1) < 0.012
    np.testing.assert_allclose(x.mean(axis=0), mean, atol=5 * np.sqrt(var / 4000).max())


def test_gaussian_mixture_weights_means_stds():
    """Two well-separated modes: annealing recovers the weights, which plain Langevin cannot."""
    weights, mu, s = np.array([0.25, 0.75]), np.array([-4.0, 4.0]), np.array([0.5, 1.0])
    sigmas = _geometric(10.0, 0.3, 30)
    sigma_end = float(sigmas[-1])

    def score_fn(x, sigma):
        var = s**2 + sigma[:, None, None]**2
        log_p = np.log(weights) - 0.5 * jnp.log(var) - 0.5 * (x[..., None] - mu)**2 / var
        return jnp.sum(jax.nn.softmax(log_p, axis=-1) * (mu - x[..., None]) / var, axis=-1)

    x_init = jax.random.uniform(jax.random.key(0), (8000, 1), minval=-10, maxval=10)
    x = np.asarray(langevin.annealed_langevin_dynamics(
        score_fn, jax.random.key(1), x_init, sigmas, 20, 0.3 * sigma_end**2, denoise=False).samples)
    x = x.ravel()
    # Without denoising the target is p_σL: components N(μ_k, s_k² + σ_L²).
    std = np.sqrt(s**2 + sigma_end**2)
    left, right = x[x < 0], x[x >= 0]
    assert abs(left.size / x.size - weights[0]) < 0.03
    np.testing.assert_allclose([left.mean(), right.mean()], mu, atol=0.05)
    np.testing.assert_allclose([left.std(), right.std()], std, rtol=0.05)
    cdf = lambda v: np.sum(weights * stats.norm.cdf((v[..., None] - mu) / std), axis=-1)
    assert stats.kstest(x, cdf).statistic < 0.03


def test_steps_follow_update_rule_and_ladder():
    """Recovered noise (x' − x − α_i·s)/√(2α_i) is N(0, 1) at every level only with the right α_i."""
    mu, s = 0.5, 0.2
    score_fn = _gaussian_score(mu, s)
    sigmas, n_steps_each, step_lr = _geometric(1.0, 0.1, 4), 3, 2e-3
    x_init = langevin.uniform_init(jax.random.key(0), (64, 8, 8, 1))
    out = langevin.annealed_langevin_dynamics(score_fn, jax.random.key(1), x_init, sigmas,
                                              n_steps_each, step_lr, denoise=False, keep_every=1)
    np.testing.assert_array_equal(out.intermediates[-1], out.samples)
    states = np.concatenate([np.asarray(x_init)[None], np.asarray(out.intermediates)], axis=0)
    level_sigmas = np.repeat(sigmas, n_steps_each).astype(np.float64)
    alphas = step_lr * (level_sigmas / sigmas[-1])**2
    for t in range(sigmas.size * n_steps_each):
        x = states[t].astype(np.float64)
        score = -(x - mu) / (s**2 + level_sigmas[t]**2)
        z = (states[t + 1] - x - alphas[t] * score) / np.sqrt(2 * alphas[t])
        assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.06, (t, z.mean(), z.std())


def test_keep_every_keeps_every_kth_state():
    score_fn = _gaussian_score(0.5, 0.2)
    sigmas, n_steps_each = _geometric(1.0, 0.1, 3), 4
    x_init = langevin.uniform_init(jax.random.key(0), (4, 8, 8, 3))
    run = functools.partial(langevin.annealed_langevin_dynamics, score_fn, jax.random.key(1), x_init,
                            sigmas, n_steps_each, 1e-3)
    plain = run()
    every_step = run(keep_every=1)
    every_other = run(keep_every=2)
    assert plain.intermediates is None and plain.diagnostics is None
    assert every_step.intermediates.shape == (12, 4, 8, 8, 3)
    assert every_other.intermediates.shape == (6, 4, 8, 8, 3)
    np.testing.assert_allclose(every_other.intermediates, every_step.intermediates[1::2], atol=1e-6)
    for out in (every_step, every_other):
        np.testing.assert_allclose(out.samples, plain.samples, atol=1e-6)
        final = out.intermediates[-1]
        np.testing.assert_allclose(
            out.samples, langevin.denoise_step(final, score_fn(final, jnp.full((4,), sigmas[-1])),
                                               sigmas[-1]), atol=1e-6)


def test_keep_every_must_divide_steps():
    with pytest.raises(ValueError, match="keep_every 5 does not divide the 12 steps"):
        langevin.annealed_langevin_dynamics(_gaussian_score(0.5, 0.2), jax.random.key(0),
                                            jnp.zeros((2, 4)), _geometric(1.0, 0.1, 3), 4, 1e-3,
                                            keep_every=5)


def test_traced_program_does_not_grow_with_levels_or_steps():
    score_fn = _gaussian_score(0.5, 0.2)
    x_init = jnp.zeros((2, 8, 8, 3))

    def jaxpr(n_levels, n_steps_each, keep_every):
        def sample(rng, sigmas, step_lr):
            return langevin.annealed_langevin_dynamics(score_fn, rng, x_init, sigmas, n_steps_each,
                                                       step_lr, keep_every=keep_every,
                                                       return_diagnostics=True)
        return jax.make_jaxpr(sample)(jax.random.key(0), _geometric(1.0, 0.01, n_levels), 1e-3).jaxpr

    small, large = jaxpr(3, 2, 0), jaxpr(60, 20, 0)
    assert _count(small, "scan") == _count(large, "scan") == 2
    assert _count(small) == _count(large)
    assert _count(jaxpr(4, 2, 4)) == _count(jaxpr(60, 20, 40))


def test_new_ladder_and_step_lr_reuse_compilation():
    n_traces = []

    def score_fn(x, sigma):
        n_traces.append(1)
        return -x / (1 + sigma[:, None]**2)

    x_init = jnp.zeros((2, 4))
    langevin.annealed_langevin_dynamics(score_fn, jax.random.key(0), x_init,
                                        _geometric(1.0, 0.01, 5), 2, 1e-3)
    traced = len(n_traces)
    out = langevin.annealed_langevin_dynamics(score_fn, jax.random.key(0), x_init,
                                              _geometric(2.0, 0.02, 5), 2, 3e-3)
    assert len(n_traces) == traced and out.samples.shape == (2, 4)


def test_score_parameters_in_a_partial_are_traced_not_recompiled():
    # What `get_score_fn` hands the samplers: new network parameters must reuse the compilation.
    n_traces = []

    def scaled_score(scale, x, sigma):
        n_traces.append(1)
        return -scale * x / (1 + sigma[:, None]**2)

    x_init = jnp.ones((2, 4))
    ladder = _geometric(1.0, 0.01, 5)
    run = lambda scale: langevin.annealed_langevin_dynamics(
        jax.tree_util.Partial(scaled_score, jnp.float32(scale)), jax.random.key(0), x_init, ladder, 2, 1e-3)
    first = run(1.0)
    traced = len(n_traces)
    second = run(3.0)
    assert len(n_traces) == traced
    assert not np.allclose(first.samples, second.samples)


def test_diagnostics_with_constant_score():
    """A constant score c makes ‖s‖, the batch-mean term and, via the states, ‖x‖ and snr exact."""
    c, shape = 0.3, (16, 8, 8, 3)
    dim = np.prod(shape[1:])
    sigmas, n_steps_each, step_lr = np.array([1.0, 0.5, 0.25], np.float32), 2, 0.01
    score_fn = lambda x, sigma: jnp.full_like(x, c)
    x_init = langevin.uniform_init(jax.random.key(0), shape)
    out = langevin.annealed_langevin_dynamics(score_fn, jax.random.key(1), x_init, sigmas,
                                              n_steps_each, step_lr, denoise=False, keep_every=1,
                                              return_diagnostics=True)
    diag = out.diagnostics
    assert all(field.shape == (3,) for field in diag)
    alphas = step_lr * (sigmas / sigmas[-1])**2
    np.testing.assert_allclose(diag.step_size, alphas, rtol=1e-6)
    np.testing.assert_allclose(diag.grad_norm, c * np.sqrt(dim), rtol=1e-5)
    np.testing.assert_allclose(diag.grad_mean_norm, c**2 * dim * sigmas**2, rtol=1e-5)
    states = np.concatenate([np.asarray(x_init)[None], np.asarray(out.intermediates)], axis=0)
    per_example_norm = lambda a: np.linalg.norm(a.reshape(*a.shape[:2], -1), axis=-1).mean(axis=-1)
    # Per-level values are means over the level's T steps.
    image_norm = per_example_norm(states[1:]).reshape(3, n_steps_each).mean(axis=1)
    np.testing.assert_allclose(diag.image_norm, image_norm, rtol=1e-5)
    step_alphas = np.repeat(alphas, n_steps_each)[:, None, None, None, None]
    noise = (states[1:] - states[:-1] - step_alphas * c) / np.sqrt(2 * step_alphas)
    snr = np.sqrt(step_alphas.ravel() / 2) * c * np.sqrt(dim) / per_example_norm(noise)
    np.testing.assert_allclose(diag.snr, snr.reshape(3, n_steps_each).mean(axis=1), rtol=1e-3)


def _inpaint_masks():
    random_mask = np.random.default_rng(3).random((1000, 4, 4, 1)) < 0.5
    channel_mask = np.zeros((4, 4, 3), bool)
    channel_mask[..., 0] = True
    return [random_mask, channel_mask]


@pytest.mark.parametrize("mask", _inpaint_masks(), ids=["random_pixels", "one_channel"])
def test_inpainting_known_noised_unknown_from_prior(mask):
    """Known pixels track reference + σ_i·z' at every level; unknown ones follow the prior."""
    rng = np.random.default_rng(4)
    shape = (1000, 4, 4, 3)
    mu = rng.uniform(0.2, 0.8, size=shape[1:])
    s = rng.uniform(0.05, 0.3, size=shape[1:])
    reference = rng.uniform(size=shape).astype(np.float32)
    sigmas, n_steps_each, step_lr = _geometric(1.0, 0.05, 6), 4, 2.5e-4
    out = langevin.annealed_langevin_inpainting(
        _gaussian_score(mu, s), jax.random.key(1), langevin.uniform_init(jax.random.key(0), shape),
        reference, mask, sigmas, n_steps_each, step_lr, keep_every=1)
    known = np.broadcast_to(mask, shape)
    states = np.asarray(out.intermediates, np.float64).reshape(sigmas.size, n_steps_each, *shape)
    for level, sigma in enumerate(sigmas.astype(np.float64)):
        # After a step x = c + α·s(c) + √(2α)·z with c = reference + σ·z', so x − reference has
        # mean α(μ − reference)/v and variance σ²(1 − α/v)² + 2α, v = s² + σ².
        alpha = step_lr * (sigma / sigmas[-1])**2
        v = s**2 + sigma**2
        scale = np.sqrt(sigma**2 * (1 - alpha / v)**2 + 2 * alpha)
        z = (states[level] - reference - alpha * (mu - reference) / v) / scale
        assert abs(z[-1][known].mean()) < 0.03 and abs(z[-1][known].std() - 1) < 0.03, level
        # z' is drawn afresh at every step (as the official code does), not once per level.
        assert abs(np.corrcoef(z[-2][known], z[-1][known])[0, 1]) < 0.05, level
    np.testing.assert_array_equal(out.intermediates[-1], out.samples)
    mean, var = _gaussian_moments(0.5, 1 / 12, mu, s, sigmas, n_steps_each, step_lr, denoise=False)
    z = (np.asarray(out.samples, np.float64) - mean) / np.sqrt(var)
    assert abs(z[~known].mean()) < 0.03 and abs(z[~known].std() - 1) < 0.03


def test_inpainting_denoise_restores_known_pixels():
    shape = (8, 4, 4, 3)
    reference = np.random.default_rng(5).uniform(size=shape).astype(np.float32)
    mask = np.zeros((4, 4, 1), bool)
    mask[:, :2] = True
    score_fn = _gaussian_score(0.5, 0.2)
    sigmas = _geometric(1.0, 0.05, 3)
    x_init = langevin.uniform_init(jax.random.key(0), shape)
    noisy = langevin.annealed_langevin_inpainting(score_fn, jax.random.key(1), x_init, reference, mask,
                                                  sigmas, 2, 1e-3, keep_every=6)
    clean = langevin.annealed_langevin_inpainting(score_fn, jax.random.key(1), x_init, reference, mask,
                                                  sigmas, 2, 1e-3, denoise=True)
    known = np.broadcast_to(mask, shape)
    assert not np.allclose(noisy.samples[known], reference[known])
    np.testing.assert_array_equal(clean.samples[known], reference[known])
    final = noisy.intermediates[-1]
    denoised = langevin.denoise_step(final, score_fn(final, jnp.full((8,), sigmas[-1])), sigmas[-1])
    np.testing.assert_allclose(clean.samples[~known], np.asarray(denoised)[~known], atol=1e-6)


@pytest.mark.parametrize("name, reference_shape, mask_shape", [
    ("mask", (2, 4, 4, 3), (4, 4, 2)),
    ("reference", (3, 4, 4, 3), (4, 4, 1)),
])
def test_inpainting_rejects_shapes_that_do_not_broadcast(name, reference_shape, mask_shape):
    with pytest.raises(ValueError, match=f"{name} of shape"):
        langevin.annealed_langevin_inpainting(
            _gaussian_score(0.5, 0.2), jax.random.key(0), jnp.zeros((2, 4, 4, 3)),
            jnp.zeros(reference_shape), jnp.ones(mask_shape), _geometric(1.0, 0.1, 2), 1, 1e-3)


def test_interpolation_noise_is_standard_and_correlated_along_rows():
    """With s ≡ 0 and α = 1/2 one step adds exactly the noise: corr(col j, col k) = cos(φ_j − φ_k)."""
    n_rows, n_interpolations = 64, 5
    x_init = langevin.repeat_for_interpolation(
        langevin.uniform_init(jax.random.key(0), (n_rows, 8, 8, 3)), n_interpolations)
    np.testing.assert_array_equal(x_init[:n_interpolations], np.broadcast_to(x_init[0], (5, 8, 8, 3)))
    out = langevin.annealed_langevin_interpolation(
        lambda x, sigma: jnp.zeros_like(x), jax.random.key(1), x_init, np.ones(1, np.float32), 1, 0.5,
        n_interpolations, denoise=True)
    noise = np.asarray(out.samples - x_init).reshape(n_rows, n_interpolations, -1)
    columns = noise.transpose(1, 0, 2).reshape(n_interpolations, -1)
    angles = np.linspace(0, np.pi / 2, n_interpolations)
    # 12k values per column: standard error of a correlation ≈ 0.01.
    np.testing.assert_allclose(columns.std(axis=1), 1.0, atol=0.03)
    np.testing.assert_allclose(np.corrcoef(columns), np.cos(angles[:, None] - angles), atol=0.04)
    # Rows draw their own p and q.
    assert abs(np.corrcoef(noise[0::2, 0].ravel(), noise[1::2, 0].ravel())[0, 1]) < 0.05


def test_interpolation_rejects_batch_not_divisible():
    with pytest.raises(ValueError, match="n_interpolations 4 must be >= 1 and divide the batch size 6"):
        langevin.annealed_langevin_interpolation(
            lambda x, sigma: -x, jax.random.key(0), jnp.zeros((6, 2)), _geometric(1.0, 0.1, 2), 1,
            1e-3, 4)
