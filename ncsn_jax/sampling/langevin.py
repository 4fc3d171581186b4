"""Annealed Langevin dynamics (NCSNv2 Algorithm 1), with inpainting and interpolation variants, and
consistent annealed sampling (CAS), which differs only in the scale of each step's noise.

The samplers share one scan body. At flat step t of the L·T steps, the level is i = t // T and
the step size is α_i = ε·(σ_i/σ_L)² (ε = `step_lr`, T = `n_steps_each`, σ_L = `sigmas[-1]`). A step

1. applies the mode's constraint to x (inpainting: known pixels ← reference + σ_i·z'),
2. evaluates s = score_fn(x, σ_i),
3. draws the mode's noise z (interpolation: noise correlated along each row),
4. sets x ← x + α_i·s + √(2α_i)·z (CAS: x + α_i·s + c_t·z, `consistent_noise_scales`).

After the last step the optional denoising step x ← x + σ_L²·s(x, σ_L) (Tweedie) returns the posterior
mean of the clean image. Nothing is clamped: images leave the sampler as they are and are clipped to
[0, 1] only where they are saved.

All steps run in one `lax.scan` (nested in an outer scan over chunks of `keep_every` steps when
intermediate states are kept), so the traced program does not grow with L or T. The samplers are
jit-compiled with `n_steps_each`, `keep_every`, `denoise` and `return_diagnostics` static; `sigmas`
and `step_lr` are traced, so a new ladder of the same length or a new ε reuses the compilation.

`score_fn` is passed to the compiled program as a pytree: a `jax.tree_util.Partial` (what
`ncsn_jax.models.score.get_score_fn` returns) has its arguments, the network parameters, traced, so one
compilation serves every checkpoint of a network. A plain callable is keyed by identity, and whatever
it closes over is compiled in as constants: fine for a closed-form score, wasteful for a network.
"""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ncsn_jax.models.score import ScoreFn

_NoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
_ConstrainFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


class SamplerDiagnostics(NamedTuple):
    """Per-level statistics of the quantities the official sampler prints at every step.

    Each field has shape (L,), level i at index i (σ descending). Apart from `step_size`, each is the
    mean over the T steps of level i of a per-step value, and "‖·‖" is the mean over the batch of the
    per-example L2 norm (over all non-batch axes).

    Attributes:
        step_size: α_i = ε·(σ_i/σ_L)².
        grad_norm: ‖s‖, the score's norm.
        image_norm: ‖x‖, the state's norm after the step's update.
        snr: √(α_i/2)·‖s‖/‖z‖ with z the standard-normal noise of the step.
        grad_mean_norm: ‖mean over the batch of s‖²·σ_i², as the official code defines it; for the exact
            score of the data the batch mean of s tends to 0, so this measures a systematic drift.
    """

    step_size: jax.Array
    grad_norm: jax.Array
    image_norm: jax.Array
    snr: jax.Array
    grad_mean_norm: jax.Array


class SamplerOutput(NamedTuple):
    """What every sampler returns.

    Attributes:
        samples: (B, ...) final states, after the denoising step when it is on.
        intermediates: (L·T/keep_every, B, ...) the state after steps keep_every, 2·keep_every, ...,
            L·T (before any denoising), or None when keep_every is 0.
        diagnostics: per-level statistics, or None unless return_diagnostics.
    """

    samples: jax.Array
    intermediates: jax.Array | None
    diagnostics: SamplerDiagnostics | None


def uniform_init(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Draws the official initial state x0 ~ U[0, 1).

    Args:
        rng: PRNG key.
        shape: (B, H, W, C) or any (B, ...).

    Returns:
        float32 array of `shape`, in [0, 1).
    """
    return jax.random.uniform(rng, shape, jnp.float32)


def langevin_step(x: jax.Array, score: jax.Array, noise: jax.Array,
                  step_size: ArrayLike) -> jax.Array:
    """One Langevin update x + α·s + √(2α)·z.

    Args:
        x: (B, ...) current state.
        score: score at x, shape of x.
        noise: standard-normal draw z, shape of x.
        step_size: α > 0, scalar.

    Returns:
        The updated state, shape of x.
    """
    return x + step_size * score + jnp.sqrt(2.0 * step_size) * noise


def denoise_step(x: jax.Array, score: jax.Array, sigma_end: ArrayLike) -> jax.Array:
    """Tweedie's estimate of the clean image, x + σ_L²·s(x, σ_L).

    Args:
        x: (B, ...) state after the last Langevin step.
        score: score at x for noise level σ_L, shape of x.
        sigma_end: σ_L, the smallest noise level, scalar.

    Returns:
        E[clean image | x] under the model, shape of x.
    """
    return x + sigma_end**2 * score


def repeat_for_interpolation(x_start: jax.Array, n_interpolations: int) -> jax.Array:
    """Builds the interpolation sampler's initial batch, as the official code does.

    Args:
        x_start: (n_rows, ...) one initial state per row of the interpolation grid.
        n_interpolations: n, the number of columns.

    Returns:
        (n_rows·n, ...) each start state repeated n times, row-major (example r·n + j is row r, column j).
    """
    return jnp.repeat(x_start, n_interpolations, axis=0)


def _batch_mean_norm(a: jax.Array) -> jax.Array:
    return jnp.mean(jnp.linalg.norm(a.reshape(a.shape[0], -1), axis=-1))


def _standard_noise(key: jax.Array, x: jax.Array) -> jax.Array:
    return jax.random.normal(key, x.shape, x.dtype)


def _unconstrained(key: jax.Array, x: jax.Array, sigma: jax.Array) -> jax.Array:
    del key, sigma
    return x


def consistent_noise_scales(sigmas: jax.Array, n_steps_each: int, step_lr: ArrayLike) -> jax.Array:
    """The noise scale of each of the L·T steps of consistent annealed sampling (CAS).

    Jolicoeur-Martineau et al. (2020) scale the noise so that the state's noise level follows the ladder
    exactly. With η = ε/σ_L², a step x + η·σ_i²·s(x, σ_i) applied to y + σ_i·n (exact score of data y
    concentrated at a point) leaves y + (1 − η)·σ_i·n; adding β·σ_next·z with

        β = √(1 − ((1 − η)·σ_i/σ_next)²)

    gives noise of level exactly σ_next, the level of the next step (σ_i itself within a level, σ_{i+1}
    across levels, γ = σ_i/σ_{i+1} the ladder's ratio). This needs (1 − η)·γ ≤ 1, i.e.
    ε ≥ σ_L²(1 − 1/γ), which a config must meet (the cas record of `ncsn_jax.sampling.methods`);
    scales are clamped at 0 here, so a smaller ε adds no noise rather than NaN. The last step targets
    σ = 0 and adds no noise (the original algorithm's σ_{L+1} = 0).

    Args:
        sigmas: (L,) noise levels σ1 > ... > σ_L.
        n_steps_each: T, steps per level.
        step_lr: ε, the step size at σ_L.

    Returns:
        (L·T,) the scale β·σ_next of each step's standard-normal noise.
    """
    eta = step_lr / sigmas[-1]**2
    current = jnp.repeat(sigmas, n_steps_each)
    following = jnp.concatenate([current[1:], jnp.zeros((1,), sigmas.dtype)])
    variance = following**2 - ((1.0 - eta) * current)**2
    return jnp.sqrt(jnp.maximum(variance, 0.0)).at[-1].set(0.0)


def _anneal(score_fn: ScoreFn, rng: jax.Array, x_init: jax.Array, sigmas: jax.Array,
            n_steps_each: int, step_lr: ArrayLike, keep_every: int, return_diagnostics: bool,
            draw_noise: _NoiseFn, constrain: _ConstrainFn,
            noise_scales: jax.Array | None = None) -> SamplerOutput:
    """Runs the L·T annealed steps shared by all samplers, without the denoising step.

    The noise of step t is scaled by √(2α_i) (Langevin), or by `noise_scales[t]` when given (CAS).
    """
    n_levels = sigmas.shape[0]
    n_total = n_levels * n_steps_each
    chunk = keep_every or n_total
    if n_total % chunk:
        raise ValueError(f"keep_every {keep_every} does not divide the {n_total} steps "
                         f"({n_levels} levels x n_steps_each {n_steps_each})")
    step_sizes = step_lr * (sigmas / sigmas[-1])**2
    batch = x_init.shape[0]

    def step(x, t):
        level = t // n_steps_each
        sigma, step_size = sigmas[level], step_sizes[level]
        # fold_in on the flat step index makes the noise independent of how steps are chunked.
        constrain_key, noise_key = jax.random.split(jax.random.fold_in(rng, t))
        x = constrain(constrain_key, x, sigma)
        score = score_fn(x, jnp.full((batch,), sigma))
        noise = draw_noise(noise_key, x)
        if noise_scales is None:
            x = langevin_step(x, score, noise, step_size)
        else:
            x = x + step_size * score + noise_scales[t] * noise
        if not return_diagnostics:
            return x, None
        grad_norm = _batch_mean_norm(score)
        stats = (grad_norm, _batch_mean_norm(x),
                 jnp.sqrt(step_size / 2) * grad_norm / _batch_mean_norm(noise),
                 jnp.sum(jnp.mean(score, axis=0)**2) * sigma**2)
        return x, stats

    def run_chunk(x, first_step):
        x, stats = jax.lax.scan(step, x, first_step + jnp.arange(chunk))
        # Only the chunk's last state is emitted, so memory grows with what is kept, not with L·T.
        return x, (x if keep_every else None, stats)

    x, (kept, stats) = jax.lax.scan(run_chunk, x_init, jnp.arange(0, n_total, chunk))
    diagnostics = None
    if return_diagnostics:
        per_level = [s.reshape(n_levels, n_steps_each).mean(axis=1) for s in stats]
        diagnostics = SamplerDiagnostics(step_sizes, *per_level)
    return SamplerOutput(x, kept, diagnostics)


def _validate(x_init: jax.Array, sigmas: jax.Array, n_steps_each: int, keep_every: int) -> None:
    if sigmas.ndim != 1 or sigmas.shape[0] == 0:
        raise ValueError(f"sigmas must be a non-empty 1-D array (σ descending), got shape {sigmas.shape}")
    if x_init.ndim < 1:
        raise ValueError("x_init must have a leading batch axis, got a scalar")
    if n_steps_each < 1:
        raise ValueError(f"n_steps_each must be >= 1, got {n_steps_each}")
    if keep_every < 0:
        raise ValueError(f"keep_every must be >= 0 (0 keeps no intermediate states), got {keep_every}")


def _denoise(score_fn: ScoreFn, x: jax.Array, sigmas: jax.Array) -> jax.Array:
    return denoise_step(x, score_fn(x, jnp.full((x.shape[0],), sigmas[-1])), sigmas[-1])


_STATIC = ("n_steps_each", "denoise", "keep_every", "return_diagnostics")


def jit_sampler(static_argnames: tuple[str, ...]):
    """jax.jit for a sampler whose first argument, score_fn, is traced as a pytree (see module doc)."""

    def decorate(sampler):
        compiled = jax.jit(sampler, static_argnames=static_argnames)

        @functools.wraps(sampler)
        def run(score_fn, *args, **kwargs):
            if not isinstance(score_fn, jax.tree_util.Partial):
                score_fn = jax.tree_util.Partial(score_fn)
            return compiled(score_fn, *args, **kwargs)

        return run

    return decorate


@jit_sampler(_STATIC)
def annealed_langevin_dynamics(score_fn: ScoreFn, rng: jax.Array, x_init: ArrayLike,
                               sigmas: ArrayLike, n_steps_each: int, step_lr: ArrayLike,
                               denoise: bool = True, keep_every: int = 0,
                               return_diagnostics: bool = False) -> SamplerOutput:
    """Annealed Langevin dynamics (NCSNv2 Algorithm 1) with the optional final denoising step.

    Args:
        score_fn: s(x, σ), see `ncsn_jax.models.score` and the module docstring.
        rng: PRNG key.
        x_init: (B, ...) initial state x0, e.g. `uniform_init` (official: U[0,1), NHWC).
        sigmas: (L,) noise levels σ1 > ... > σ_L (`sigma_begin` ... `sigma_end`).
        n_steps_each: T, Langevin steps per level; static.
        step_lr: ε, the step size at σ_L; α_i = ε·(σ_i/σ_L)².
        denoise: apply x ← x + σ_L²·s(x, σ_L) after the last step (official default: on).
        keep_every: k > 0 also returns the state after every k-th step (k must divide L·T);
            0 keeps none. Static.
        return_diagnostics: also return per-level `SamplerDiagnostics`. Static.

    Returns:
        `SamplerOutput`; `.samples` is (B, ...) float32, unclamped.

    Raises:
        ValueError: if sigmas is not a non-empty 1-D array, n_steps_each < 1, or keep_every is
            negative or does not divide L·T.
    """
    x_init = jnp.asarray(x_init, jnp.float32)
    sigmas = jnp.asarray(sigmas, jnp.float32)
    _validate(x_init, sigmas, n_steps_each, keep_every)
    out = _anneal(score_fn, rng, x_init, sigmas, n_steps_each, step_lr, keep_every,
                  return_diagnostics, _standard_noise, _unconstrained)
    if not denoise:
        return out
    return out._replace(samples=_denoise(score_fn, out.samples, sigmas))


def prior_init(rng: jax.Array, shape: tuple[int, ...], sigma_begin: ArrayLike) -> jax.Array:
    """Draws x0 ~ N(0, σ1²·I), the VE prior: data noised at σ1 ≫ the data's spread looks like it.

    Args:
        rng: PRNG key.
        shape: (B, ...).
        sigma_begin: σ1, the largest noise level.

    Returns:
        float32 array of `shape`.
    """
    return sigma_begin * jax.random.normal(rng, shape, jnp.float32)


@jit_sampler(_STATIC)
def consistent_annealed_sampling(score_fn: ScoreFn, rng: jax.Array, x_init: ArrayLike,
                                 sigmas: ArrayLike, n_steps_each: int, step_lr: ArrayLike,
                                 denoise: bool = True, keep_every: int = 0,
                                 return_diagnostics: bool = False) -> SamplerOutput:
    """Consistent annealed sampling (CAS; Jolicoeur-Martineau et al., 2020) with optional denoising.

    The steps of `annealed_langevin_dynamics` (α_i = ε·(σ_i/σ_L)²), with each step's noise scaled so
    that the state's noise level follows the ladder (`consistent_noise_scales`). The original algorithm
    takes one step per level (T = 1) and starts from the prior N(0, σ1²) (`prior_init`).

    Args and returns: as `annealed_langevin_dynamics`.
    """
    x_init = jnp.asarray(x_init, jnp.float32)
    sigmas = jnp.asarray(sigmas, jnp.float32)
    _validate(x_init, sigmas, n_steps_each, keep_every)
    out = _anneal(score_fn, rng, x_init, sigmas, n_steps_each, step_lr, keep_every,
                  return_diagnostics, _standard_noise, _unconstrained,
                  consistent_noise_scales(sigmas, n_steps_each, step_lr))
    if not denoise:
        return out
    return out._replace(samples=_denoise(score_fn, out.samples, sigmas))


@jit_sampler(_STATIC)
def annealed_langevin_inpainting(score_fn: ScoreFn, rng: jax.Array, x_init: ArrayLike,
                                 reference: ArrayLike, mask: ArrayLike, sigmas: ArrayLike,
                                 n_steps_each: int, step_lr: ArrayLike, denoise: bool = False,
                                 keep_every: int = 0,
                                 return_diagnostics: bool = False) -> SamplerOutput:
    """Fills in the unknown pixels of `reference` by annealed Langevin dynamics.

    Before every step the known pixels are overwritten with reference + σ_i·z', a fresh
    z' ~ N(0, I) at every step (the official code draws it inside the step loop), so the known part
    follows the noised data at the current level while the rest is sampled from the model
    conditioned on it. The update then moves all pixels. The official sampler is restricted to the
    right half of 32×32 RGB images; any mask and channel count work here.

    Args:
        score_fn: s(x, σ), see `ncsn_jax.models.score` and the module docstring.
        rng: PRNG key.
        x_init: (B, ...) initial state, e.g. `uniform_init`.
        reference: images whose known pixels are kept, broadcastable to x_init's shape, [0, 1].
        mask: nonzero where a pixel is known, broadcastable to x_init's shape (e.g. (B, H, W, 1) or
            (H, W, C)).
        sigmas: (L,) noise levels, σ descending.
        n_steps_each: T, Langevin steps per level; static.
        step_lr: ε, the step size at σ_L.
        denoise: apply the final denoising step, then set the known pixels to `reference` (their
            clean value). Off by default, as in the official inpainting. When off, the known pixels of
            the result still carry the last level's noise (≈ σ_L).
        keep_every: as in `annealed_langevin_dynamics`.
        return_diagnostics: as in `annealed_langevin_dynamics`.

    Returns:
        `SamplerOutput`; `.samples` is (B, ...) float32, unclamped.

    Raises:
        ValueError: if reference or mask do not broadcast to x_init's shape, or as
            `annealed_langevin_dynamics`.
    """
    return _inpaint(score_fn, rng, x_init, reference, mask, sigmas, n_steps_each, step_lr, denoise,
                    keep_every, return_diagnostics, consistent=False)


@jit_sampler(_STATIC)
def consistent_annealed_inpainting(score_fn: ScoreFn, rng: jax.Array, x_init: ArrayLike,
                                   reference: ArrayLike, mask: ArrayLike, sigmas: ArrayLike,
                                   n_steps_each: int, step_lr: ArrayLike, denoise: bool = False,
                                   keep_every: int = 0,
                                   return_diagnostics: bool = False) -> SamplerOutput:
    """`annealed_langevin_inpainting` with the steps of `consistent_annealed_sampling`.

    The known pixels are set to reference + σ_i·z' before each step, as there; the noise of the
    update is CAS's, so the unknown pixels' noise level follows the ladder.
    """
    return _inpaint(score_fn, rng, x_init, reference, mask, sigmas, n_steps_each, step_lr, denoise,
                    keep_every, return_diagnostics, consistent=True)


def inpainting_constraints(x_init: jax.Array, reference: ArrayLike, mask: ArrayLike
                           ) -> tuple[_ConstrainFn, Callable[[jax.Array], jax.Array]]:
    """What every inpainting sampler does to the known pixels (nonzero in `mask`): before a step at level σ,
    set them to reference + σ·z' with a fresh z' (`constrain(key, x, σ)`), and at the end to the reference
    itself (`keep_known(x)`).

    Raises:
        ValueError: if reference or mask do not broadcast to x_init's shape.
    """
    reference = jnp.asarray(reference, jnp.float32)
    known = jnp.asarray(mask) != 0
    for name, shape in (("reference", reference.shape), ("mask", known.shape)):
        try:
            broadcast = jnp.broadcast_shapes(shape, x_init.shape)
        except ValueError:
            broadcast = None
        if broadcast != x_init.shape:
            raise ValueError(f"{name} of shape {shape} does not broadcast to x_init's shape "
                             f"{x_init.shape}")

    def constrain(key, x, sigma):
        corrupted = reference + sigma * jax.random.normal(key, x.shape, x.dtype)
        return jnp.where(known, corrupted, x)

    return constrain, lambda x: jnp.where(known, reference, x)


def _inpaint(score_fn, rng, x_init, reference, mask, sigmas, n_steps_each, step_lr, denoise, keep_every,
             return_diagnostics, consistent):
    x_init = jnp.asarray(x_init, jnp.float32)
    sigmas = jnp.asarray(sigmas, jnp.float32)
    _validate(x_init, sigmas, n_steps_each, keep_every)
    constrain, keep_known = inpainting_constraints(x_init, reference, mask)
    noise_scales = consistent_noise_scales(sigmas, n_steps_each, step_lr) if consistent else None
    out = _anneal(score_fn, rng, x_init, sigmas, n_steps_each, step_lr, keep_every,
                  return_diagnostics, _standard_noise, constrain, noise_scales)
    if not denoise:
        return out
    return out._replace(samples=keep_known(_denoise(score_fn, out.samples, sigmas)))


@jit_sampler(_STATIC + ("n_interpolations",))
def annealed_langevin_interpolation(score_fn: ScoreFn, rng: jax.Array, x_init: ArrayLike,
                                    sigmas: ArrayLike, n_steps_each: int, step_lr: ArrayLike,
                                    n_interpolations: int, denoise: bool = False,
                                    keep_every: int = 0,
                                    return_diagnostics: bool = False) -> SamplerOutput:
    """Annealed Langevin dynamics whose noise varies smoothly along each row of a grid.

    The batch is n_rows rows of n columns, row-major. At every step two independent draws p, q of
    one image each per row give column j the noise cos(φ_j)·p + sin(φ_j)·q, φ = linspace(0, π/2, n):
    each column's noise is exactly N(0, I), the correlation between columns j and k is
    cos(φ_j − φ_k), and columns 0 and n − 1 are independent. Starting every column of a row from the
    same state (`repeat_for_interpolation`) then gives samples that morph from column 0 to n − 1.

    Args:
        score_fn: s(x, σ), see `ncsn_jax.models.score` and the module docstring.
        rng: PRNG key.
        x_init: (n_rows·n, ...) initial state, row-major; see `repeat_for_interpolation`.
        sigmas: (L,) noise levels, σ descending.
        n_steps_each: T, Langevin steps per level; static.
        step_lr: ε, the step size at σ_L.
        n_interpolations: n, columns per row; static.
        denoise: apply the final denoising step. Off by default: the official interpolation never
            denoises.
        keep_every: as in `annealed_langevin_dynamics`.
        return_diagnostics: as in `annealed_langevin_dynamics`.

    Returns:
        `SamplerOutput`; `.samples` is (n_rows·n, ...) float32, unclamped.

    Raises:
        ValueError: if n_interpolations < 1 or does not divide the batch size, or as
            `annealed_langevin_dynamics`.
    """
    x_init = jnp.asarray(x_init, jnp.float32)
    sigmas = jnp.asarray(sigmas, jnp.float32)
    _validate(x_init, sigmas, n_steps_each, keep_every)
    if n_interpolations < 1 or x_init.shape[0] % n_interpolations:
        raise ValueError(f"n_interpolations {n_interpolations} must be >= 1 and divide the batch "
                         f"size {x_init.shape[0]} (n_rows x n_interpolations)")
    n_rows = x_init.shape[0] // n_interpolations
    image_shape = x_init.shape[1:]
    weight_shape = (1, n_interpolations) + (1,) * len(image_shape)
    angles = jnp.linspace(0.0, jnp.pi / 2, n_interpolations).reshape(weight_shape)

    def draw_noise(key, x):
        p, q = jax.random.normal(key, (2, n_rows, 1) + image_shape, x.dtype)
        return (jnp.cos(angles) * p + jnp.sin(angles) * q).reshape(x.shape)

    out = _anneal(score_fn, rng, x_init, sigmas, n_steps_each, step_lr, keep_every,
                  return_diagnostics, draw_noise, _unconstrained)
    if not denoise:
        return out
    return out._replace(samples=_denoise(score_fn, out.samples, sigmas))
