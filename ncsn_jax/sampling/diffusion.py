"""Samplers of the diffusion literature on an NCSNv2 network, written in σ and the denoiser D.

The networks' score is f(x)/σ with no σ input (technique 3), so the denoiser

    D(x; σ) = x + σ²·s(x, σ)      (Tweedie: E[clean image | x], for x = image + σ·n)

is defined at every σ, and any sampler of the variance-exploding process x_σ = image + σ·n runs on the
network unchanged, on any levels σ_0 > σ_1 > … > σ_{N−1} between the trained σ1 and σL: the trained
ladder, a sub-ladder or `schedule.rho_sigmas`. Each is one jit-compiled `lax.scan` over the N − 1
intervals, started from the prior N(0, σ_0²) (`langevin.prior_init`), and ends with the denoising step
x ← D(x; σ_{N−1}), the step to σ = 0, when `denoise` is on. With h = log(σ/σ') for an interval σ → σ':

- `ancestral`: draws x' from the Gaussian q(x_σ' | x_σ = x, image = D(x; σ)) of the VE process (the
  reverse-diffusion step with the posterior's variance, as DDPM's ancestral step):
  x' = (σ'/σ)²·x + (1 − (σ'/σ)²)·D + σ'·√(1 − (σ'/σ)²)·z. One evaluation per level.
- `dpm_solver_2m_sde`: SDE-DPM-Solver++(2M) (Lu et al., 2022) with the midpoint correction. It follows
  the process dx = (1 + η)·(x − D)·dσ/σ + √(2η·σ·|dσ|)·z as σ falls, whose marginals are the data's
  noised at σ for every η ≥ 0 (η = 1 the reverse SDE, η = 0 the probability-flow ODE, η > 1 more noise,
  nearer a Langevin step's mixing), solving its linear part exactly:
  x' = k·x + (1 − k)·D + σ'·√(1 − e^{−2ηh})·z with k = e^{−(1+η)h}, the ancestral step at η = 1. From the
  second interval on, the change of D between the last two levels corrects D to second order:
  D + ½·(h/h_prev)·(D − D_prev). One evaluation per level.
- `edm`: the stochastic sampler of Karras et al. (2022), Algorithm 2. At a level σ inside
  [`churn_min_sigma`, `churn_max_sigma`] it first raises the noise to σ̂ = (1 + γ)·σ by adding
  √(σ̂² − σ²)·`churn_noise`·z, γ = min(`churn`/N, √2 − 1), then takes Heun's step of the probability-flow
  ODE dx/dσ = (x − D(x; σ))/σ from σ̂ to σ'. Two evaluations per interval.

Inpainting: before each evaluation at a level σ, the known pixels are set to reference + σ·z', and after the
denoising step to the reference itself (`langevin.inpainting_constraints`, as the Langevin samplers do).
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ncsn_jax.models.score import ScoreFn
from ncsn_jax.sampling.langevin import SamplerOutput, inpainting_constraints, jit_sampler

# (key, x, σ) ↦ x with the known pixels set to the noised reference; the identity when not inpainting.
_ConstrainFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _denoised(score_fn: ScoreFn, x: jax.Array, sigma: jax.Array) -> jax.Array:
    """D(x; σ) = x + σ²·s(x, σ)."""
    return x + sigma**2 * score_fn(x, jnp.full((x.shape[0],), sigma))


def _prepare(x_init: ArrayLike, sigmas: ArrayLike, reference: ArrayLike | None, mask: ArrayLike | None,
             ) -> tuple[jax.Array, jax.Array, _ConstrainFn, Callable[[jax.Array], jax.Array]]:
    """Checked inputs, the constraint applied before each evaluation and the one applied to the result
    (`langevin.inpainting_constraints`; none without a reference)."""
    x_init = jnp.asarray(x_init, jnp.float32)
    sigmas = jnp.asarray(sigmas, jnp.float32)
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must be a 1-D array of at least 2 levels (σ descending), got shape {sigmas.shape}")
    if (reference is None) != (mask is None):
        raise ValueError("inpainting needs both reference and mask")
    if reference is None:
        return x_init, sigmas, lambda key, x, sigma: x, lambda x: x
    return (x_init, sigmas, *inpainting_constraints(x_init, reference, mask))


def _finish(score_fn: ScoreFn, rng: jax.Array, x: jax.Array, sigmas: jax.Array, denoise: bool,
            constrain: _ConstrainFn, keep_known: Callable[[jax.Array], jax.Array]) -> SamplerOutput:
    """The denoising step D(x; σL), the step to σ = 0, when `denoise` is on."""
    if not denoise:
        return SamplerOutput(x, None, None)
    last = sigmas.shape[0] - 1
    x = constrain(jax.random.fold_in(rng, 2 * last), x, sigmas[-1])
    return SamplerOutput(keep_known(_denoised(score_fn, x, sigmas[-1])), None, None)


def _intervals(sigmas: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(index i, σ_i, σ_{i+1}) of each of the N − 1 intervals."""
    return jnp.arange(sigmas.shape[0] - 1), sigmas[:-1], sigmas[1:]


@jit_sampler(("denoise",))
def ancestral(score_fn: ScoreFn, rng: jax.Array, x_init: ArrayLike, sigmas: ArrayLike, denoise: bool = True,
              reference: ArrayLike | None = None, mask: ArrayLike | None = None) -> SamplerOutput:
    """The VE process's ancestral sampler over `sigmas` (module docstring).

    Args:
      score_fn: s(x, σ), see `ncsn_jax.models.score`.
      rng: PRNG key.
      x_init: (B, ...) the state at σ_0, e.g. `langevin.prior_init`.
      sigmas: (N,) the levels σ_0 > … > σ_{N−1}, N ≥ 2.
      denoise: end with x ← D(x; σ_{N−1}); static. N evaluations with it, N − 1 without.
      reference, mask: inpainting (both or neither): images in [0, 1] and a mask, nonzero where a pixel is
        known, each broadcastable to x_init's shape.

    Returns:
      `SamplerOutput` with `.samples` (B, ...) float32, unclamped.
    """
    x_init, sigmas, constrain, keep_known = _prepare(x_init, sigmas, reference, mask)

    def step(x, interval):
        index, sigma, sigma_next = interval
        constrain_key, noise_key = jax.random.split(jax.random.fold_in(rng, 2 * index))
        denoised = _denoised(score_fn, constrain(constrain_key, x, sigma), sigma)
        kept = (sigma_next / sigma)**2  # the share of x that the step keeps
        noise = jax.random.normal(noise_key, x.shape, x.dtype)
        return kept * x + (1.0 - kept) * denoised + sigma_next * jnp.sqrt(1.0 - kept) * noise, None

    x, _ = jax.lax.scan(step, x_init, _intervals(sigmas))
    return _finish(score_fn, rng, x, sigmas, denoise, constrain, keep_known)


@jit_sampler(("denoise",))
def dpm_solver_2m_sde(score_fn: ScoreFn, rng: jax.Array, x_init: ArrayLike, sigmas: ArrayLike,
                      eta: ArrayLike = 1.0, denoise: bool = True, reference: ArrayLike | None = None,
                      mask: ArrayLike | None = None) -> SamplerOutput:
    """SDE-DPM-Solver++(2M) over `sigmas` (module docstring); arguments and evaluations as `ancestral`.

    Args:
      eta: η ≥ 0, the noise of the reverse process that the steps follow (the family with the data's
        marginals): 1, the reverse SDE (the ancestral step's noise); 0, the probability-flow ODE
        (DPM-Solver++(2M)); above 1, more noise, each step nearer a Langevin step's mixing.
    """
    x_init, sigmas, constrain, keep_known = _prepare(x_init, sigmas, reference, mask)

    def step(carry, interval):
        x, previous_denoised, previous_h = carry
        index, sigma, sigma_next = interval
        constrain_key, noise_key = jax.random.split(jax.random.fold_in(rng, 2 * index))
        denoised = _denoised(score_fn, constrain(constrain_key, x, sigma), sigma)
        h = jnp.log(sigma / sigma_next)
        kept = jnp.exp(-(1.0 + eta) * h)  # (σ'/σ)^(1+η): the share of x that the step keeps
        # The first interval has no earlier D: its step is first order (the ancestral step at η = 1).
        correction = jnp.where(index > 0, 0.5 * (h / previous_h), 0.0) * (denoised - previous_denoised)
        noise = jax.random.normal(noise_key, x.shape, x.dtype)
        x = (kept * x + (1.0 - kept) * (denoised + correction)
             + sigma_next * jnp.sqrt(-jnp.expm1(-2.0 * eta * h)) * noise)
        return (x, denoised, h), None

    (x, _, _), _ = jax.lax.scan(step, (x_init, jnp.zeros_like(x_init), jnp.ones((), jnp.float32)),
                                _intervals(sigmas))
    return _finish(score_fn, rng, x, sigmas, denoise, constrain, keep_known)


@jit_sampler(("denoise",))
def edm(score_fn: ScoreFn, rng: jax.Array, x_init: ArrayLike, sigmas: ArrayLike, churn: ArrayLike,
        churn_min_sigma: ArrayLike, churn_max_sigma: ArrayLike, churn_noise: ArrayLike, denoise: bool = True,
        reference: ArrayLike | None = None, mask: ArrayLike | None = None) -> SamplerOutput:
    """Karras et al.'s stochastic sampler (Algorithm 2) over `sigmas` (module docstring).

    Args:
      churn: S_churn ≥ 0; each level inside the churn's range raises σ by the factor 1 + min(S_churn/N,
        √2 − 1), N = len(sigmas). 0: Heun's method on the probability-flow ODE.
      churn_min_sigma, churn_max_sigma: S_tmin ≤ S_tmax, the levels σ that churn.
      churn_noise: S_noise, the added noise's scale (slightly above 1 offsets the denoiser's smoothing).
      The others as `ancestral`. 2(N − 1) evaluations, plus 1 with `denoise`.

    Returns:
      `SamplerOutput` with `.samples` (B, ...) float32, unclamped.
    """
    x_init, sigmas, constrain, keep_known = _prepare(x_init, sigmas, reference, mask)
    gamma = jnp.minimum(churn / sigmas.shape[0], math.sqrt(2.0) - 1.0)

    def slope(key, x, sigma):  # dx/dσ of the probability-flow ODE
        x = constrain(key, x, sigma)
        return x, (x - _denoised(score_fn, x, sigma)) / sigma

    def step(x, interval):
        index, sigma, sigma_next = interval
        churn_key, first_key, second_key = jax.random.split(jax.random.fold_in(rng, 2 * index), 3)
        level_gamma = jnp.where((churn_min_sigma <= sigma) & (sigma <= churn_max_sigma), gamma, 0.0)
        raised = sigma * (1.0 + level_gamma)
        # √(σ̂² − σ²) written so that it cannot round below 0 (σ̂ = σ gave √(−1e-9) = NaN).
        added = sigma * jnp.sqrt(level_gamma * (2.0 + level_gamma))
        x = x + added * churn_noise * jax.random.normal(churn_key, x.shape, x.dtype)
        x, first = slope(first_key, x, raised)
        euler = x + (sigma_next - raised) * first
        euler, second = slope(second_key, euler, sigma_next)
        return x + (sigma_next - raised) * 0.5 * (first + second), None

    x, _ = jax.lax.scan(step, x_init, _intervals(sigmas))
    return _finish(score_fn, rng, x, sigmas, denoise, constrain, keep_known)
