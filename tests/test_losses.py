"""The DSM loss against closed forms (the official-parity check is in test_convert.py)."""
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import losses


def test_loss_of_the_exact_score_of_a_point_mass_is_zero():
    # Data at a single point x0: the noised score is −(x̃ − x0)/σ², which equals the target exactly.
    x0 = jax.random.uniform(jax.random.key(0), (4, 6, 6, 2))
    sigma = jnp.array([0.1, 1.0, 5.0, 20.0])
    noise = jax.random.normal(jax.random.key(1), x0.shape)
    exact = lambda x, s: -(x - x0) / s[:, None, None, None] ** 2
    assert float(losses.dsm_loss_given_noise(exact, x0, sigma, noise)) < 1e-8


def test_loss_of_a_zero_score_is_half_the_noise_energy():
    x = jnp.zeros((3, 4, 4, 1))
    noise = jax.random.normal(jax.random.key(0), x.shape)
    loss = losses.dsm_loss_given_noise(lambda y, s: jnp.zeros_like(y), x, jnp.array([0.5, 2.0, 9.0]), noise)
    np.testing.assert_allclose(loss, 0.5 * jnp.mean(jnp.sum(noise**2, axis=(1, 2, 3))), rtol=1e-6)


def test_levels_are_drawn_uniformly():
    # With s(x, σ) = σ everywhere, each pixel contributes ½(σ² + z)², whose mean over z is ½(σ⁴ + 1):
    # the expected batch loss is ½·D·(mean over the ladder of σ⁴ + 1) when levels are uniform.
    sigmas = jnp.array([2.0, 1.0, 0.5])
    x = jnp.zeros((20_000, 2, 2, 1))
    loss = losses.dsm_loss(lambda y, s: jnp.broadcast_to(s[:, None, None, None], y.shape), x, sigmas,
                           jax.random.key(3))
    expected = 0.5 * 4 * (np.mean(np.asarray(sigmas) ** 4) + 1.0)
    # Per example the loss has std ≈ 20 here; over 20,000 examples the mean is within ~0.15 (1σ).
    np.testing.assert_allclose(float(loss), expected, atol=0.6)
