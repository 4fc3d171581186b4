"""Which sampler draws the images: `config.sampling.method` on the trained ladder or a sub-ladder.

Each method is one `SamplerMethod` record of `SAMPLERS`: its initial state, its program, its score
evaluations per image, the settings it reads (which name its outputs), its own config rules and its
inpainting program, if any. The methods (all run on the trained NCSNv2 networks, which are VE score models):

  ald   annealed Langevin dynamics, the paper's sampler (`langevin.annealed_langevin_dynamics`), from
        U[0, 1) as the official code; L·T score evaluations, plus 1 to denoise.
  cas   consistent annealed sampling (`langevin.consistent_annealed_sampling`), from the prior
        N(0, σ1²); L·T, plus 1 to denoise.
  pc    the VE SDE's predictor–corrector sampler (`sde.predictor_corrector`), from the prior;
        L·(corrector_steps + 1), its last predictor's mean being the denoised sample.
  ode   the probability-flow ODE by Heun's method (`sde.probability_flow`), from the prior;
        2(L − 1), plus 1 to denoise.
  ancestral          the VE process's ancestral sampler (`diffusion.ancestral`), from the prior;
                     L − 1, plus 1 to denoise.
  dpm_solver_2m_sde  SDE-DPM-Solver++(2M) (`diffusion.dpm_solver_2m_sde`) with the noise `sampling.eta`, from
                     the prior; L − 1, plus 1 to denoise.
  edm                Karras et al.'s stochastic sampler, Algorithm 2 (`diffusion.edm`), from the prior;
                     2(L − 1), plus 1 to denoise.

Here L counts the levels the sampler visits, which `sampling.schedule` chooses:
  "ladder"  the trained ladder, or with `sampling.ladder_stride` k > 1 every k-th σ of it (evenly spaced
            indices from σ1 to σL, both kept, so ⌈(L − 1)/k⌉ + 1 levels);
  "rho"     `sampling.num_levels` levels from σ1 to σL spaced by `sampling.rho` (`schedule.rho_sigmas`),
            for the methods that take any levels (all but ald and cas, whose step size ε is technique 4's
            for a geometric ladder).
On a sub-ladder ε is re-derived by technique 4 for its ratio γ and `n_steps_each`
(`schedule.langevin_step_size`); on the whole ladder ε is `sampling.step_lr`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import ml_collections
import numpy as np
from jax.typing import ArrayLike

from ncsn_jax import schedule
from ncsn_jax.errors import ConfigError
from ncsn_jax.models.score import ScoreFn
from ncsn_jax.sampling import diffusion, langevin, sde


def sub_ladder_indices(num_levels: int, stride: int) -> np.ndarray:
    """The levels of the sub-ladder: ⌈(L − 1)/k⌉ + 1 indices evenly spaced from 0 to L − 1."""
    if stride == 1:
        return np.arange(num_levels)
    count = math.ceil((num_levels - 1) / stride) + 1
    return np.round(np.linspace(0, num_levels - 1, count)).astype(np.int32)


SCHEDULES = ("ladder", "rho")


def num_sampled_levels(num_levels: int, settings: ml_collections.ConfigDict) -> int:
    """How many levels the sampler visits on a trained ladder of `num_levels` levels."""
    if settings.schedule == "rho":
        return settings.num_levels
    return len(sub_ladder_indices(num_levels, settings.ladder_stride))


def ladder(sigmas: jax.Array, settings: ml_collections.ConfigDict) -> jax.Array:
    """The noise levels the sampler runs on (`settings.schedule`): the trained ladder, its sub-ladder, or
    the ρ-schedule between its ends."""
    if settings.schedule == "rho":
        return schedule.rho_sigmas(sigmas[0], sigmas[-1], settings.num_levels, settings.rho)
    if settings.ladder_stride == 1:
        return sigmas
    return sigmas[sub_ladder_indices(sigmas.shape[0], settings.ladder_stride)]


def technique4_step_lr(levels: np.ndarray, n_steps_each: int) -> float:
    """Technique 4's ε for a geometric ladder σ1 > … > σL and T steps per level."""
    levels = np.asarray(levels, np.float64)
    gamma = (levels[0] / levels[-1])**(1.0 / (len(levels) - 1))
    return schedule.langevin_step_size(gamma, float(levels[-1]), n_steps_each)


def step_lr(sigmas: jax.Array, settings: ml_collections.ConfigDict) -> float:
    """ε for the sampler's ladder: `settings.step_lr`, or technique 4's on a sub-ladder for a method that
    takes a step size (technique 4's search is not run for the others, which ignore ε)."""
    if settings.ladder_stride == 1 or "step_lr" not in get_method(settings.method).settings:
        return settings.step_lr
    return technique4_step_lr(np.asarray(ladder(sigmas, settings)), settings.n_steps_each)


def ladder_and_step_lr(sigmas: jax.Array, settings: ml_collections.ConfigDict) -> tuple[jax.Array, float]:
    """`ladder` and `step_lr` together: what `run` and `inpaint` take, computed once per run of batches
    (technique 4's search and the ladder's copy to the host are not repeated for every batch)."""
    return ladder(sigmas, settings), step_lr(sigmas, settings)


def _uniform_init(rng: jax.Array, shape: tuple[int, ...], sigma_begin: ArrayLike) -> jax.Array:
    """U[0, 1), as the official code starts the paper's sampler (σ1 is not used)."""
    del sigma_begin
    return langevin.uniform_init(rng, shape)


def _annealed_program(sampler: Callable) -> Callable:
    """The program of a sampler of `ncsn_jax.sampling.langevin` (ald, cas): T = `n_steps_each` steps per level."""
    def program(score_fn: ScoreFn, rng: jax.Array, x_init: jax.Array, levels: jax.Array, epsilon: float,
                settings: ml_collections.ConfigDict) -> jax.Array:
        return sampler(score_fn, rng, x_init, levels, n_steps_each=settings.n_steps_each, step_lr=epsilon,
                       denoise=settings.denoise).samples
    return program


def _annealed_inpainting_program(sampler: Callable) -> Callable:
    """The inpainting program of a sampler of `ncsn_jax.sampling.langevin`; the official inpainting does not denoise."""
    def program(score_fn: ScoreFn, rng: jax.Array, x_init: jax.Array, reference: jax.Array, mask: jax.Array,
                levels: jax.Array, epsilon: float, settings: ml_collections.ConfigDict) -> jax.Array:
        return sampler(score_fn, rng, x_init, reference, mask, levels, n_steps_each=settings.n_steps_each,
                       step_lr=epsilon).samples
    return program


def _predictor_corrector_program(score_fn: ScoreFn, rng: jax.Array, x_init: jax.Array, levels: jax.Array,
                                 epsilon: float, settings: ml_collections.ConfigDict) -> jax.Array:
    del epsilon  # the corrector's steps follow the signal-to-noise rule
    return sde.predictor_corrector(score_fn, rng, x_init, levels, corrector_steps=settings.corrector_steps,
                                   snr=settings.snr, denoise=settings.denoise).samples


def _probability_flow_program(score_fn: ScoreFn, rng: jax.Array, x_init: jax.Array, levels: jax.Array,
                              epsilon: float, settings: ml_collections.ConfigDict) -> jax.Array:
    del rng, epsilon  # deterministic, and Heun's steps are the ladder's intervals
    return sde.probability_flow(score_fn, x_init, levels, denoise=settings.denoise).samples


def _diffusion_programs(sampler: Callable, own_settings: tuple[str, ...]) -> tuple[Callable, Callable]:
    """The program and the inpainting program of a sampler of `ncsn_jax.sampling.diffusion`, which reads the
    config fields `own_settings` (by the same names) besides `denoise`; ε is not theirs."""
    def arguments(settings: ml_collections.ConfigDict) -> dict:
        return {**{field: settings[field] for field in own_settings}, "denoise": settings.denoise}

    def program(score_fn: ScoreFn, rng: jax.Array, x_init: jax.Array, levels: jax.Array, epsilon: float,
                settings: ml_collections.ConfigDict) -> jax.Array:
        del epsilon
        return sampler(score_fn, rng, x_init, levels, **arguments(settings)).samples

    def inpainting_program(score_fn: ScoreFn, rng: jax.Array, x_init: jax.Array, reference: jax.Array,
                           mask: jax.Array, levels: jax.Array, epsilon: float,
                           settings: ml_collections.ConfigDict) -> jax.Array:
        del epsilon
        return sampler(score_fn, rng, x_init, levels, **arguments(settings), reference=reference, mask=mask).samples

    return program, inpainting_program


_EDM_SETTINGS = ("churn", "churn_min_sigma", "churn_max_sigma", "churn_noise")
_ANCESTRAL_PROGRAMS = _diffusion_programs(diffusion.ancestral, ())
_DPM_SOLVER_PROGRAMS = _diffusion_programs(diffusion.dpm_solver_2m_sde, ("eta",))
_EDM_PROGRAMS = _diffusion_programs(diffusion.edm, _EDM_SETTINGS)


def _one_per_level_evaluations(levels: int, settings: ml_collections.ConfigDict) -> int:
    return levels - 1 + int(settings.denoise)


def _heun_evaluations(levels: int, settings: ml_collections.ConfigDict) -> int:
    return 2 * (levels - 1) + int(settings.denoise)


def _annealed_evaluations(levels: int, settings: ml_collections.ConfigDict) -> int:
    return levels * settings.n_steps_each + int(settings.denoise)


def _predictor_corrector_evaluations(levels: int, settings: ml_collections.ConfigDict) -> int:
    return levels * (settings.corrector_steps + 1)  # the last predictor's mean is the denoised sample


def _no_rules_of_its_own(settings: ml_collections.ConfigDict, sigmas: np.ndarray) -> None:
    del settings, sigmas


def _check_consistent_step_size(settings: ml_collections.ConfigDict, sigmas: np.ndarray) -> None:
    """ε must let CAS's noise follow the ladder (`langevin.consistent_noise_scales`)."""
    levels = np.asarray(sigmas, np.float64)[sub_ladder_indices(len(sigmas), settings.ladder_stride)]
    gamma = float(np.max(levels[:-1] / levels[1:])) if len(levels) > 1 else 1.0
    epsilon = step_lr(np.asarray(sigmas), settings)
    smallest = levels[-1]**2 * (1.0 - 1.0 / gamma)
    if epsilon < smallest:
        raise ConfigError(
            f"consistent annealed sampling needs a step size ε >= σL²·(1 − 1/γ) = {smallest:.3g} on this "
            f"ladder (γ = {gamma:.4g}), so that the noise can follow the ladder; ε is {epsilon:.3g}: "
            "raise config.sampling.step_lr")


def _check_corrector(settings: ml_collections.ConfigDict, sigmas: np.ndarray) -> None:
    del sigmas
    corrector_steps = settings.corrector_steps
    if not (isinstance(corrector_steps, int) and corrector_steps >= 0):
        raise ConfigError(f"config.sampling.corrector_steps {settings.corrector_steps} must be >= 0")
    if not settings.snr > 0:
        raise ConfigError(f"config.sampling.snr {settings.snr} must be positive")


def _check_non_negative(settings: ml_collections.ConfigDict, field: str) -> None:
    value = settings[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"config.sampling.{field} must be a finite number >= 0, got {value!r}")


def _check_eta(settings: ml_collections.ConfigDict, sigmas: np.ndarray) -> None:
    del sigmas
    _check_non_negative(settings, "eta")


def _check_churn(settings: ml_collections.ConfigDict, sigmas: np.ndarray) -> None:
    del sigmas
    for field in _EDM_SETTINGS:
        _check_non_negative(settings, field)
    if settings.churn_min_sigma > settings.churn_max_sigma:
        raise ConfigError(f"config.sampling.churn_min_sigma {settings.churn_min_sigma} must not exceed "
                          f"config.sampling.churn_max_sigma {settings.churn_max_sigma}")
    if settings.churn > 0 and settings.churn_noise == 0:
        raise ConfigError("config.sampling.churn_noise must be positive when config.sampling.churn is: it scales "
                          "the noise that churning adds")


@dataclasses.dataclass(frozen=True)
class SamplerMethod:
    """One value of `config.sampling.method`: everything that depends on which sampler runs.

    Attributes:
      name: the config value, e.g. "cas".
      initial_state: (rng, shape (B, H, W, C), σ1) ↦ x0.
      program: (score_fn, rng, x_init, levels, ε, settings) ↦ samples (B, H, W, C), unclamped; `levels`
        and ε are `ladder_and_step_lr`'s (the sampled ladder, and the step size at its σL).
      score_evaluations: (levels of the sampled ladder, settings) ↦ score evaluations per image.
      settings: the `config.sampling` fields the program reads besides `ladder_stride` and `denoise`, in
        the order output names show them.
      check: (settings, trained ladder σ1 > … > σL) ↦ None, raising ConfigError for values of the method's
        own settings that cannot run; `config_checks.check_sampling` calls it.
      inpainting_program: (score_fn, rng, x_init, reference, mask, levels, ε, settings) ↦ samples, the known
        pixels of `mask` held at `reference`; None for a method that does not inpaint.
      any_levels: whether the method runs on any levels (`sampling.schedule` "rho" too), not only on the
        trained ladder or a sub-ladder of it.
    """

    name: str
    initial_state: Callable[[jax.Array, tuple[int, ...], ArrayLike], jax.Array]
    program: Callable[..., jax.Array]
    score_evaluations: Callable[[int, ml_collections.ConfigDict], int]
    settings: tuple[str, ...]
    check: Callable[[ml_collections.ConfigDict, np.ndarray], None] = _no_rules_of_its_own
    inpainting_program: Callable[..., jax.Array] | None = None
    any_levels: bool = False

    @property
    def inpaints(self) -> bool:
        return self.inpainting_program is not None


SAMPLERS = {method.name: method for method in (
    SamplerMethod("ald", _uniform_init, _annealed_program(langevin.annealed_langevin_dynamics),
                  _annealed_evaluations, ("n_steps_each", "step_lr"),
                  inpainting_program=_annealed_inpainting_program(langevin.annealed_langevin_inpainting)),
    SamplerMethod("cas", langevin.prior_init, _annealed_program(langevin.consistent_annealed_sampling),
                  _annealed_evaluations, ("n_steps_each", "step_lr"), check=_check_consistent_step_size,
                  inpainting_program=_annealed_inpainting_program(langevin.consistent_annealed_inpainting)),
    SamplerMethod("pc", langevin.prior_init, _predictor_corrector_program, _predictor_corrector_evaluations,
                  ("corrector_steps", "snr"), check=_check_corrector, any_levels=True),
    SamplerMethod("ode", langevin.prior_init, _probability_flow_program, _heun_evaluations, (), any_levels=True),
    SamplerMethod("ancestral", langevin.prior_init, _ANCESTRAL_PROGRAMS[0], _one_per_level_evaluations, (),
                  any_levels=True, inpainting_program=_ANCESTRAL_PROGRAMS[1]),
    SamplerMethod("dpm_solver_2m_sde", langevin.prior_init, _DPM_SOLVER_PROGRAMS[0], _one_per_level_evaluations,
                  ("eta",), check=_check_eta, any_levels=True, inpainting_program=_DPM_SOLVER_PROGRAMS[1]),
    SamplerMethod("edm", langevin.prior_init, _EDM_PROGRAMS[0], _heun_evaluations, _EDM_SETTINGS,
                  check=_check_churn, any_levels=True, inpainting_program=_EDM_PROGRAMS[1]),
)}
METHODS = tuple(SAMPLERS)
INPAINTING_METHODS = tuple(name for name, method in SAMPLERS.items() if method.inpaints)
# The paper's sampler on the whole ladder: its outputs and evaluation caches keep the names they had before
# there were other samplers.
PAPERS_METHOD = "ald"


def get_method(name: str) -> SamplerMethod:
    """The record of `config.sampling.method` `name`; ConfigError naming the methods for any other name."""
    if name not in SAMPLERS:
        raise ConfigError(f"config.sampling.method {name!r} is not one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def is_papers_sampler(settings: ml_collections.ConfigDict) -> bool:
    """Whether `settings` run the paper's sampler (ald) on the whole trained ladder."""
    return (settings.method, settings.ladder_stride) == (PAPERS_METHOD, 1)


def settings_in_use(settings: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The method's own settings that this run reads: its `SamplerMethod.settings`, less ε (`step_lr`) on a
    sub-ladder, which re-derives it; then the ρ-schedule's `num_levels` and `rho` when it is the schedule."""
    own = tuple(field for field in get_method(settings.method).settings
                if field != "step_lr" or settings.ladder_stride == 1)
    return own + (("num_levels", "rho") if settings.schedule == "rho" else ())


# How output names show the settings, e.g. `_cas_T1_lr2.9e-05`, `_pc_corrector1_snr0.16`, `_ancestral_N24_rho7`.
_NAME_FORMATS = {"n_steps_each": "T{}", "step_lr": "lr{:.3g}", "corrector_steps": "corrector{}", "snr": "snr{:g}",
                 "churn": "churn{:g}", "churn_min_sigma": "from{:g}", "churn_max_sigma": "to{:g}",
                 "churn_noise": "noise{:g}", "eta": "eta{:g}", "num_levels": "N{}", "rho": "rho{:g}"}


def file_name_suffix(settings: ml_collections.ConfigDict) -> str:
    """What output file names append so that runs of other samplers or settings do not overwrite each
    other: nothing for the paper's sampler on the whole ladder (it keeps the plain name), else the method
    and the settings it reads, e.g. `_cas_T3_stride3`, `_cas_T1_lr2.9e-05` (ε only at stride 1: a
    sub-ladder re-derives it) or `_ancestral_N24_rho7`."""
    if is_papers_sampler(settings):
        return ""
    parts = ["", settings.method]
    parts += [_NAME_FORMATS[field].format(settings[field]) for field in settings_in_use(settings)]
    if settings.ladder_stride > 1:
        parts.append(f"stride{settings.ladder_stride}")
    if not settings.denoise:
        parts.append("nodenoise")
    return "_".join(parts)


def score_evaluations(num_levels: int, settings: ml_collections.ConfigDict) -> int:
    """Score evaluations per image of `settings` on a trained ladder of `num_levels` levels."""
    return get_method(settings.method).score_evaluations(num_sampled_levels(num_levels, settings), settings)


def initial_state(method: str, rng: jax.Array, shape: tuple[int, ...], sigma_begin: ArrayLike) -> jax.Array:
    """x0 of `method`: U[0, 1) for ald (as the official code), the prior N(0, σ1²) otherwise."""
    return get_method(method).initial_state(rng, shape, sigma_begin)


def run(score_fn: ScoreFn, rng: jax.Array, x_init: jax.Array, levels: jax.Array, epsilon: float,
        settings: ml_collections.ConfigDict) -> jax.Array:
    """The samples (B, …) of `settings.method` from `x_init`, unclamped.

    `levels` and `epsilon` are the sampler's ladder and step size, `ladder_and_step_lr(sigmas, settings)`.
    """
    return get_method(settings.method).program(score_fn, rng, x_init, levels, epsilon, settings)


def inpaint(score_fn: ScoreFn, rng: jax.Array, x_init: jax.Array, reference: jax.Array, mask: jax.Array,
            sigmas: jax.Array, settings: ml_collections.ConfigDict) -> jax.Array:
    """Inpainting by `settings.method`, one of `INPAINTING_METHODS`; the official inpainting does not denoise.

    Raises:
      ValueError: for a method that does not inpaint (`config_checks.check_mode` tells the user).
    """
    method = get_method(settings.method)
    if not method.inpaints:
        raise ValueError(f"{method.name} does not inpaint; the methods that do: {', '.join(INPAINTING_METHODS)}")
    levels, epsilon = ladder_and_step_lr(sigmas, settings)
    return method.inpainting_program(score_fn, rng, x_init, reference, mask, levels, epsilon, settings)
