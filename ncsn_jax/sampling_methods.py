"""Which sampler draws the images: `config.sampling.method` on the trained ladder or a sub-ladder.

Methods (all run on the trained NCSNv2 networks, which are VE score models):

  ald   annealed Langevin dynamics, the paper's sampler (`sampling.annealed_langevin_dynamics`), from
        U[0, 1) as the official code; L·T score evaluations, plus 1 to denoise.
  cas   consistent annealed sampling (`sampling.consistent_annealed_sampling`), from the prior
        N(0, σ1²); L·T, plus 1 to denoise.
  pc    the VE SDE's predictor–corrector sampler (`sde_sampling.predictor_corrector`), from the prior;
        L·(corrector_steps + 1), its last predictor's mean being the denoised sample.
  ode   the probability-flow ODE by Heun's method (`sde_sampling.probability_flow`), from the prior;
        2(L − 1), plus 1 to denoise.

`sampling.ladder_stride` k > 1 runs any of them on a sub-ladder of the trained one: every k-th σ
(evenly spaced indices from σ1 to σL, both kept, so ⌈(L − 1)/k⌉ + 1 levels), and ε is then
re-derived by technique 4 for the sub-ladder's ratio γ and `n_steps_each` (`schedule.langevin_step_size`);
at k = 1 ε is `sampling.step_lr`.
"""
from __future__ import annotations

import math

import jax
import ml_collections
import numpy as np

from ncsn_jax import sampling, schedule, sde_sampling
from ncsn_jax.errors import ConfigError
from ncsn_jax.score import ScoreFn

METHODS = ("ald", "cas", "pc", "ode")
INPAINTING_METHODS = ("ald", "cas")


def sub_ladder_indices(num_levels: int, stride: int) -> np.ndarray:
    """The levels of the sub-ladder: ⌈(L − 1)/k⌉ + 1 indices evenly spaced from 0 to L − 1."""
    if stride == 1:
        return np.arange(num_levels)
    count = math.ceil((num_levels - 1) / stride) + 1
    return np.round(np.linspace(0, num_levels - 1, count)).astype(np.int32)


def ladder(sigmas: jax.Array, settings: ml_collections.ConfigDict) -> jax.Array:
    """The noise levels the sampler runs on: the trained ladder, or its sub-ladder."""
    if settings.ladder_stride == 1:
        return sigmas
    return sigmas[sub_ladder_indices(sigmas.shape[0], settings.ladder_stride)]


def technique4_step_lr(levels: np.ndarray, n_steps_each: int) -> float:
    """Technique 4's ε for a geometric ladder σ1 > … > σL and T steps per level."""
    levels = np.asarray(levels, np.float64)
    gamma = (levels[0] / levels[-1])**(1.0 / (len(levels) - 1))
    return schedule.langevin_step_size(gamma, float(levels[-1]), n_steps_each)


def step_lr(sigmas: jax.Array, settings: ml_collections.ConfigDict) -> float:
    """ε for the sampler's ladder: `settings.step_lr`, or technique 4's on a sub-ladder."""
    if settings.ladder_stride == 1:
        return settings.step_lr
    return technique4_step_lr(np.asarray(ladder(sigmas, settings)), settings.n_steps_each)


def ladder_and_step_lr(sigmas: jax.Array, settings: ml_collections.ConfigDict) -> tuple[jax.Array, float]:
    """`ladder` and `step_lr` together: what `run` and `inpaint` take, computed once per run of batches
    (technique 4's search and the ladder's copy to the host are not repeated for every batch)."""
    return ladder(sigmas, settings), step_lr(sigmas, settings)


def file_name_suffix(settings: ml_collections.ConfigDict) -> str:
    """What output file names append so that runs of other samplers or settings do not overwrite each
    other: nothing for `ald` on the whole ladder (the paper's sampler keeps the plain name), else the method
    and the settings it uses, e.g. `_cas_T3_stride3` or `_cas_T1_lr2.9e-05` (ε only at stride 1: a
    sub-ladder re-derives it)."""
    if (settings.method, settings.ladder_stride) == ("ald", 1):
        return ""
    parts = ["", settings.method]
    if settings.method in ("ald", "cas"):
        parts.append(f"T{settings.n_steps_each}")
        if settings.ladder_stride == 1:
            parts.append(f"lr{settings.step_lr:.3g}")
    elif settings.method == "pc":
        parts.append(f"corrector{settings.corrector_steps}_snr{settings.snr:g}")
    if settings.ladder_stride > 1:
        parts.append(f"stride{settings.ladder_stride}")
    if not settings.denoise:
        parts.append("nodenoise")
    return "_".join(parts)


def score_evaluations(num_levels: int, settings: ml_collections.ConfigDict) -> int:
    """Score evaluations per image of `settings` on a trained ladder of `num_levels` levels."""
    levels = len(sub_ladder_indices(num_levels, settings.ladder_stride))
    denoise = int(settings.denoise)
    if settings.method in ("ald", "cas"):
        return levels * settings.n_steps_each + denoise
    if settings.method == "pc":
        return levels * (settings.corrector_steps + 1)
    return 2 * (levels - 1) + denoise


def check_settings(settings: ml_collections.ConfigDict, sigmas: np.ndarray, what: str = "sample") -> None:
    """Raises ConfigError for settings that cannot run (`what` names the mode, e.g. "inpaint").

    Args:
      settings: `config.sampling`.
      sigmas: the trained ladder σ1 > … > σL.
    """
    if settings.method not in METHODS:
        raise ConfigError(f"config.sampling.method {settings.method!r} is not one of {', '.join(METHODS)}")
    if what == "inpaint" and settings.method not in INPAINTING_METHODS:
        raise ConfigError(f"--mode inpaint works with config.sampling.method ald or cas, not "
                          f"{settings.method!r}")
    if what == "interpolate" and (settings.method != "ald" or settings.ladder_stride != 1):
        raise ConfigError(f"--mode interpolate works with config.sampling.method ald on the whole ladder only "
                          f"(method {settings.method!r}, ladder_stride {settings.ladder_stride})")
    num_levels = len(sigmas)
    if not 1 <= settings.ladder_stride < num_levels:
        raise ConfigError(f"config.sampling.ladder_stride {settings.ladder_stride} must be at least 1 and "
                          f"less than the ladder's {num_levels} levels")
    corrector_steps = settings.corrector_steps
    if settings.method == "pc" and not (isinstance(corrector_steps, int) and corrector_steps >= 0):
        raise ConfigError(f"config.sampling.corrector_steps {settings.corrector_steps} must be >= 0")
    if settings.method == "pc" and not settings.snr > 0:
        raise ConfigError(f"config.sampling.snr {settings.snr} must be positive")
    if settings.method == "cas":
        levels = np.asarray(sigmas, np.float64)[sub_ladder_indices(num_levels, settings.ladder_stride)]
        gamma = float(np.max(levels[:-1] / levels[1:])) if len(levels) > 1 else 1.0
        epsilon = step_lr(np.asarray(sigmas), settings)
        smallest = levels[-1]**2 * (1.0 - 1.0 / gamma)
        if epsilon < smallest:
            raise ConfigError(
                f"consistent annealed sampling needs a step size ε >= σL²·(1 − 1/γ) = {smallest:.3g} on this "
                f"ladder (γ = {gamma:.4g}), so that the noise can follow the ladder; ε is {epsilon:.3g}: "
                "raise config.sampling.step_lr")


def initial_state(method: str, rng: jax.Array, shape: tuple[int, ...], sigma_begin: jax.Array) -> jax.Array:
    """x0 of `method`: U[0, 1) for ald (as the official code), the prior N(0, σ1²) otherwise."""
    if method == "ald":
        return sampling.uniform_init(rng, shape)
    return sampling.prior_init(rng, shape, sigma_begin)


def run(score_fn: ScoreFn, rng: jax.Array, x_init: jax.Array, levels: jax.Array, epsilon: float,
        settings: ml_collections.ConfigDict) -> jax.Array:
    """The samples (B, …) of `settings.method` from `x_init`, unclamped.

    `levels` and `epsilon` are the sampler's ladder and step size, `ladder_and_step_lr(sigmas, settings)`.
    """
    if settings.method == "ald":
        return sampling.annealed_langevin_dynamics(
            score_fn, rng, x_init, levels, n_steps_each=settings.n_steps_each, step_lr=epsilon,
            denoise=settings.denoise).samples
    if settings.method == "cas":
        return sampling.consistent_annealed_sampling(
            score_fn, rng, x_init, levels, n_steps_each=settings.n_steps_each, step_lr=epsilon,
            denoise=settings.denoise).samples
    if settings.method == "pc":
        return sde_sampling.predictor_corrector(
            score_fn, rng, x_init, levels, corrector_steps=settings.corrector_steps, snr=settings.snr,
            denoise=settings.denoise).samples
    if settings.method == "ode":
        return sde_sampling.probability_flow(score_fn, x_init, levels, denoise=settings.denoise).samples
    raise ConfigError(f"config.sampling.method {settings.method!r} is not one of {', '.join(METHODS)}")


def inpaint(score_fn: ScoreFn, rng: jax.Array, x_init: jax.Array, reference: jax.Array, mask: jax.Array,
            sigmas: jax.Array, settings: ml_collections.ConfigDict) -> jax.Array:
    """Inpainting by `settings.method` (ald or cas); the official inpainting does not denoise."""
    levels, epsilon = ladder_and_step_lr(sigmas, settings)
    sampler = (sampling.annealed_langevin_inpainting if settings.method == "ald"
               else sampling.consistent_annealed_inpainting)
    return sampler(score_fn, rng, x_init, reference, mask, levels, n_steps_each=settings.n_steps_each,
                   step_lr=epsilon).samples
