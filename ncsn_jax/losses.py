"""Denoising score matching over a ladder of noise levels, exactly as the official NCSNv2 loss.

Per example a level σ is drawn uniformly from the ladder, x̃ = x + σz with z ~ N(0, I), the target score
is −z/σ, and the loss is ½·Σ_pixels (s_θ(x̃, σ) − target)²·σ² ("anneal power" 2, which weighs every level
equally); the batch loss is the mean over examples. It equals ½‖σ·s_θ(x̃, σ) + z‖², about ½·D at
initialisation (D = H·W·C).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ncsn_jax.models.score import ScoreFn


def dsm_loss_given_noise(score_fn: ScoreFn, x: jax.Array, sigma: jax.Array, noise: jax.Array) -> jax.Array:
    """The DSM loss for given levels and noise (deterministic; what a parity test needs).

    Args:
      score_fn: s_θ(x, σ) for x (B, H, W, C) and σ (B,).
      x: (B, H, W, C) clean images in [0, 1].
      sigma: (B,) noise level of each example.
      noise: (B, H, W, C) standard normal draw z.

    Returns:
      Scalar: the batch mean of ½·Σ (s_θ(x + σz, σ) + z/σ)²·σ².
    """
    sigma_b = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
    target = -noise / sigma_b
    score = score_fn(x + sigma_b * noise, sigma)
    per_example = 0.5 * jnp.sum(jnp.square(score - target), axis=tuple(range(1, x.ndim))) * sigma**2
    return jnp.mean(per_example)


def dsm_loss(score_fn: ScoreFn, x: jax.Array, sigmas: jax.Array, rng: jax.Array) -> jax.Array:
    """The DSM loss with one uniformly drawn level per example.

    Args:
      score_fn: s_θ(x, σ) for x (B, H, W, C) and σ (B,).
      x: (B, H, W, C) clean images in [0, 1].
      sigmas: (L,) the noise ladder σ1 > … > σL.
      rng: PRNG key for the levels and the noise.

    Returns:
      Scalar batch loss.
    """
    level_rng, noise_rng = jax.random.split(rng)
    levels = jax.random.randint(level_rng, (x.shape[0],), 0, sigmas.shape[0])
    noise = jax.random.normal(noise_rng, x.shape, x.dtype)
    return dsm_loss_given_noise(score_fn, x, sigmas[levels], noise)
