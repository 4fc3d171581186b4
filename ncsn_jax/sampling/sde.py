"""Samplers of the variance-exploding SDE (Song et al., 2021) on an NCSNv2 ladder.

A network trained at noise levels σ1 > … > σL is a score model of the VE SDE, whose marginal at noise
level σ is the data convolved with N(0, σ²·I); the NCSNv2 networks' score is their output divided by σ
(technique 3), so they can be evaluated at any σ. Two samplers run on the ladder, from the prior
N(0, σ1²·I) (`langevin.prior_init`):

- `predictor_corrector`: at each level σ_i, `corrector_steps` Langevin steps whose size follows the
  signal-to-noise rule α = 2·(r·‖z‖/‖s‖)², then the reverse-diffusion predictor from σ_i to σ_{i+1}
  (σ_{L+1} = 0): x̄ = x + (σ_i² − σ_{i+1}²)·s(x, σ_i), x = x̄ + √(σ_i² − σ_{i+1}²)·z. The last
  predictor's mean x̄ (its noise-free part) is the denoised sample. L·(corrector_steps + 1) score
  evaluations. The norms are per example (score_sde takes them over the whole batch), so an image does
  not depend on the others of its batch.
- `probability_flow`: the probability-flow ODE dx/dσ = −σ·s(x, σ), deterministic given x0, by Heun's
  second-order method from σ_i to σ_{i+1} along the ladder, then the denoising step x + σL²·s(x, σL):
  2(L − 1) + 1 score evaluations.

Each is one jit-compiled `lax.scan` over the levels, with the score function traced as a pytree (see
`ncsn_jax.sampling.langevin`).
"""
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ncsn_jax.models.score import ScoreFn
from ncsn_jax.sampling.langevin import SamplerOutput, denoise_step, jit_sampler


def _per_example_norm(a: jax.Array) -> jax.Array:
    norms = jnp.linalg.norm(a.reshape(a.shape[0], -1), axis=-1)
    return norms.reshape((-1,) + (1,) * (a.ndim - 1))


def _following_sigmas(sigmas: jax.Array) -> jax.Array:
    # σ_{i+1} for each level, 0 after the last.
    return jnp.concatenate([sigmas[1:], jnp.zeros((1,), sigmas.dtype)])


@jit_sampler(("corrector_steps", "denoise"))
def predictor_corrector(score_fn: ScoreFn, rng: jax.Array, x_init: ArrayLike, sigmas: ArrayLike,
                        corrector_steps: int, snr: ArrayLike, denoise: bool = True) -> SamplerOutput:
    """The VE SDE's predictor–corrector sampler over the ladder (see the module docstring).

    Args:
        score_fn: s(x, σ), see `ncsn_jax.models.score`.
        rng: PRNG key.
        x_init: (B, ...) initial state, e.g. `langevin.prior_init`.
        sigmas: (L,) noise levels σ1 > ... > σL.
        corrector_steps: Langevin corrector steps per level (0: the predictor alone); static.
        snr: r, the corrector's signal-to-noise ratio (score_sde: 0.16 for CIFAR-10).
        denoise: return the last predictor's mean (no noise of level σL left); static.

    Returns:
        `SamplerOutput` with `.samples` (B, ...) float32, unclamped; no intermediates or diagnostics.

    Raises:
        ValueError: if sigmas is not a non-empty 1-D array or corrector_steps < 0.
    """
    x_init = jnp.asarray(x_init, jnp.float32)
    sigmas = jnp.asarray(sigmas, jnp.float32)
    if sigmas.ndim != 1 or sigmas.shape[0] == 0:
        raise ValueError(f"sigmas must be a non-empty 1-D array (σ descending), got shape {sigmas.shape}")
    if corrector_steps < 0:
        raise ValueError(f"corrector_steps must be >= 0, got {corrector_steps}")
    batch = x_init.shape[0]

    def correct(carry, key):
        x, sigma = carry
        score = score_fn(x, jnp.full((batch,), sigma))
        noise = jax.random.normal(key, x.shape, x.dtype)
        step_size = 2.0 * (snr * _per_example_norm(noise) / _per_example_norm(score))**2
        return (x + step_size * score + jnp.sqrt(2.0 * step_size) * noise, sigma), None

    def level(carry, inputs):
        x, _ = carry
        index, sigma, sigma_next = inputs
        keys = jax.random.split(jax.random.fold_in(rng, index), corrector_steps + 1)
        (x, _), _ = jax.lax.scan(correct, (x, sigma), keys[:corrector_steps])
        variance = sigma**2 - sigma_next**2
        mean = x + variance * score_fn(x, jnp.full((batch,), sigma))
        x = mean + jnp.sqrt(variance) * jax.random.normal(keys[-1], x.shape, x.dtype)
        return (x, mean), None

    levels = (jnp.arange(sigmas.shape[0]), sigmas, _following_sigmas(sigmas))
    (x, mean), _ = jax.lax.scan(level, (x_init, x_init), levels)
    return SamplerOutput(mean if denoise else x, None, None)


@jit_sampler(("denoise",))
def probability_flow(score_fn: ScoreFn, x_init: ArrayLike, sigmas: ArrayLike,
                     denoise: bool = True) -> SamplerOutput:
    """The VE probability-flow ODE from σ1 to σL by Heun's method on the ladder (module docstring).

    Args:
        score_fn: s(x, σ), see `ncsn_jax.models.score`; evaluated at the ladder's σ only.
        x_init: (B, ...) initial state at σ1, e.g. `langevin.prior_init`.
        sigmas: (L,) noise levels σ1 > ... > σL, L ≥ 2: the solver's grid.
        denoise: apply x ← x + σL²·s(x, σL) at the end; static.

    Returns:
        `SamplerOutput` with `.samples` (B, ...) float32, unclamped; no intermediates or diagnostics.

    Raises:
        ValueError: if sigmas is not a 1-D array of at least 2 levels.
    """
    x_init = jnp.asarray(x_init, jnp.float32)
    sigmas = jnp.asarray(sigmas, jnp.float32)
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"the ODE needs a 1-D ladder of at least 2 levels, got shape {sigmas.shape}")
    batch = x_init.shape[0]

    def slope(x, sigma):
        return -sigma * score_fn(x, jnp.full((batch,), sigma))

    def heun(x, interval):
        sigma, sigma_next = interval
        step = sigma_next - sigma
        first = slope(x, sigma)
        second = slope(x + step * first, sigma_next)
        return x + 0.5 * step * (first + second), None

    x, _ = jax.lax.scan(heun, x_init, (sigmas[:-1], sigmas[1:]))
    if denoise:
        x = denoise_step(x, score_fn(x, jnp.full((batch,), sigmas[-1])), sigmas[-1])
    return SamplerOutput(x, None, None)
