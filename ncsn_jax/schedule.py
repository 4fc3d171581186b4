"""Noise levels for NCSNv2: the σ table and techniques 1, 2 and 4 of Song & Ermon (2020).

The score network is trained on a geometric ladder of noise levels σ1 > σ2 > ... > σL
(`sigma_begin` = σ1, `sigma_end` = σL, `num_scales` = L, ratio γ = σ_{i-1}/σ_i). The paper chooses
that ladder and the sampler's step size from the data instead of by hand:

* Technique 1 (`max_pairwise_distance`): σ1 is the largest Euclidean distance between two
  training images, so that the largest noise level can carry any image to any other.
* Technique 2 (`noise_scale_ratio`, `num_noise_scales`): γ is chosen so that a sample from the
  noise level σ_{i-1} lands, with probability C (`target`), within three standard deviations of
  the shell where level σ_i puts its mass, which for data dimension D reads
  Φ(√(2D)(γ−1) + 3γ) − Φ(√(2D)(γ−1) − 3γ) = C, with Φ the standard normal CDF.
  L is then however many levels a ladder of that ratio needs to get from σ1 down to σL.
  The paper asks for C ≈ 0.5, but the released configs correspond to C ≈ 0.567
  (CIFAR-10's γ = 1.037559 for D = 3072 gives C = 0.56697); with C = 0.567 `num_noise_scales`
  reproduces the configs' L to within one level.
* Technique 4 (`langevin_variance_ratio`, `langevin_step_size`): annealed Langevin dynamics runs
  T = `n_steps_each` steps at each level with step size α_i = ε·σ_i²/σL² (ε = `step_lr`).
  For Gaussian data the ratio s_T²/σ_i² between the variance after T steps and the level's own
  variance has a closed form, and ε is picked by grid search to bring it as close to 1 as
  possible. This reproduces the configs' ε for CIFAR-10, CelebA, LSUN bedroom/tower and FFHQ;
  the LSUN church config (T = 4) uses 4.9e-6 where the formula gives 2.3e-6.

`geometric_sigmas` is the single place the trained σ table is built; everything else reads it.
`rho_sigmas` gives the levels of the samplers' other schedule, between the same σ1 and σL.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special

# Rows per block in the float32 pass of `max_pairwise_distance`: large enough for the matmuls to
# run near peak speed, small enough that a block pair's B×B distance tile stays in cache.
_DISTANCE_BLOCK_ROWS = 512
# Rows (and columns) per chunk in the float64 passes, which bounds their memory to a few
# chunk×D float64 arrays however many images there are.
_FLOAT64_CHUNK_ROWS = 1024
# Interior points of the uniform grid over ε ∈ (0, 2σL²) in `langevin_step_size`. The grid
# spacing, 2σL²/1e6, is ε/4e4 even for the smallest configured ε (9e-7 at σL = 0.01).
_STEP_GRID_POINTS = 1_000_000
# Probability that a standard normal lies within three standard deviations of its mean,
# the largest overlap technique 2 can ask for.
_THREE_SIGMA_MASS = float(special.ndtr(3.0) - special.ndtr(-3.0))


def geometric_sigmas(sigma_begin: float, sigma_end: float, num_scales: int) -> np.ndarray:
    """The noise levels σ1 > ... > σL, evenly spaced in log σ.

    Computed in float64 and then cast, so every module that builds the table gets the same
    float32 values.

    Args:
      sigma_begin: σ1, the largest noise level, in pixel units of images scaled to [0, 1].
      sigma_end: σL, the smallest noise level, in the same units; 0 < σL < σ1.
      num_scales: L, the number of levels, at least 2.

    Returns:
      float32 array of shape (L,), descending, from σ1 to σL.

    Raises:
      ValueError: if the levels are not positive and decreasing or L < 2.
    """
    _check_sigma_range(sigma_begin, sigma_end)
    if num_scales < 2:
        raise ValueError(f"num_scales must be at least 2 to span sigma_begin to sigma_end, "
                         f"got {num_scales}")
    log_sigmas = np.linspace(np.log(sigma_begin), np.log(sigma_end), int(num_scales),
                             dtype=np.float64)
    return np.exp(log_sigmas).astype(np.float32)


def rho_sigmas(sigma_begin: ArrayLike, sigma_end: ArrayLike, num_levels: int, rho: float) -> jax.Array:
    """`num_levels` noise levels from σ1 to σL, evenly spaced in σ^(1/ρ) (Karras et al., 2022, eq. 5).

    ρ = 1 spaces them evenly in σ, ρ → ∞ evenly in log σ (the geometric ladder); ρ = 7, EDM's choice,
    puts more of them at small σ, where a sampler's steps matter most to the image's detail. A sampler
    visits these levels instead of the trained ladder's (`config.sampling.schedule = "rho"`): the
    networks' score is f(x)/σ (technique 3), defined at every σ.

    Args:
      sigma_begin: σ1, the largest level (scalar, may be traced).
      sigma_end: σL, the smallest, 0 < σL < σ1 (scalar, may be traced).
      num_levels: N ≥ 2, static.
      rho: ρ > 0.

    Returns:
      float32 array (N,), descending from σ1 to σL, both exact.
    """
    if num_levels < 2:
        raise ValueError(f"num_levels must be at least 2 (σ1 and σL), got {num_levels}")
    fraction = jnp.linspace(0.0, 1.0, num_levels)
    first, last = jnp.asarray(sigma_begin, jnp.float32)**(1.0 / rho), jnp.asarray(sigma_end, jnp.float32)**(1.0 / rho)
    levels = (first + fraction * (last - first))**rho
    # The ends exactly: the power's rounding must not take σ1 or σL past the trained range.
    return levels.at[0].set(sigma_begin).at[-1].set(sigma_end)


def _check_sigma_range(sigma_begin: float, sigma_end: float) -> None:
    if not 0 < sigma_end < sigma_begin < math.inf:
        raise ValueError(
            f"need 0 < sigma_end < sigma_begin < inf, got sigma_begin={sigma_begin}, sigma_end={sigma_end}")


def _overlap_residual(gamma: float, dim: int, target: float) -> float:
    """Left side minus right side of the technique-2 equation at ratio γ."""
    center = math.sqrt(2.0 * dim) * (gamma - 1.0)
    return float(special.ndtr(center + 3.0 * gamma) - special.ndtr(center - 3.0 * gamma)) - target


def noise_scale_ratio(dim: int, target: float = 0.5) -> float:
    """Technique 2: the ratio γ = σ_{i-1}/σ_i between consecutive noise levels.

    Solves Φ(√(2D)(γ−1) + 3γ) − Φ(√(2D)(γ−1) − 3γ) = C for γ > 1 by Brent's method to an
    absolute tolerance of 1e-12 in γ.

    Args:
      dim: D, the data dimension, height·width·channels; at least 5 (for D ≤ 4 the left side
        never falls below C).
      target: C, the required overlap probability, in (0, 0.9973). The paper asks for 0.5; the
        released configs correspond to about 0.567.

    Returns:
      γ > 1.

    Raises:
      ValueError: if dim or target is out of range.
    """
    if dim < 5:
        raise ValueError(f"dim must be at least 5 for the overlap to fall to the target, got {dim}")
    if not 0 < target < _THREE_SIGMA_MASS:
        raise ValueError(f"target must lie in (0, {_THREE_SIGMA_MASS:.6f}), got {target}")
    # The residual is positive at γ = 1 and tends to −C as γ grows (√(2D) > 3 moves the
    # interval's lower end to +∞), so doubling γ − 1 brackets the root.
    upper = 2.0
    while _overlap_residual(upper, dim, target) > 0:
        upper = 1.0 + 2.0 * (upper - 1.0)
    return float(optimize.brentq(_overlap_residual, 1.0, upper, args=(dim, target), xtol=1e-12))


def num_noise_scales(dim: int, sigma_begin: float, sigma_end: float, target: float = 0.5) -> int:
    """Technique 2: the number of noise levels L for a ladder from σ1 to σL at ratio γ.

    L − 1 = log(σ1/σL)/log γ rounded to the nearest integer, so the ladder's actual ratio
    (σ1/σL)^(1/(L−1)) is the one closest to γ in log space. With target 0.567 this gives the
    configs' L for CIFAR-10 (232), CelebA (500) and FFHQ (2311), and one level more for LSUN
    church (789 for 788) and bedroom (1087 for 1086).

    Args:
      dim: D, the data dimension, height·width·channels.
      sigma_begin: σ1, in pixel units of images scaled to [0, 1].
      sigma_end: σL, in the same units; 0 < σL < σ1.
      target: C, as in `noise_scale_ratio`.

    Returns:
      L ≥ 2.

    Raises:
      ValueError: if the levels are not positive and decreasing, or dim or target is out of range.
    """
    _check_sigma_range(sigma_begin, sigma_end)
    gamma = noise_scale_ratio(dim, target)
    # Even a span shorter than one ratio step needs both end levels.
    return max(2, 1 + round(math.log(sigma_begin / sigma_end) / math.log(gamma)))


def langevin_variance_ratio(step_lr: ArrayLike, gamma: float, sigma_end: float,
                            n_steps_each: int) -> np.ndarray:
    """Technique 4: s_T²/σ², the variance after a level's Langevin steps over the level's own.

    Annealed Langevin dynamics enters level σ_i with samples of variance γ²σ_i² (those of the
    previous level) and runs T steps of size α_i = ε·σ_i²/σL². For Gaussian data, with
    a = ε/σL² and b = 2ε/(σL² − σL²(1−a)²) = 2/(2−a),

        s_T²/σ² = (1−a)^(2T)·(γ² − b) + b,

    the same at every level. It tends to γ² as ε → 0 (the samples do not move), is exactly 2 at
    ε = σL² (a = 1), tends to γ² + 4T as ε → 2σL², and exceeds 1 everywhere in between.

    Args:
      step_lr: ε, scalar or array, each in (0, 2σL²), where the recursion is stable (|1 − a| < 1).
      gamma: γ = σ_{i-1}/σ_i > 1, the ladder's ratio.
      sigma_end: σL > 0, the smallest noise level.
      n_steps_each: T ≥ 1, Langevin steps per noise level.

    Returns:
      float64 array of the shape of `step_lr` with s_T²/σ² at each ε.

    Raises:
      ValueError: if any ε lies outside (0, 2σL²), or γ, σL or T is out of range.
    """
    _check_langevin_args(gamma, sigma_end, n_steps_each)
    step_lr = np.asarray(step_lr, dtype=np.float64)
    a = step_lr / sigma_end**2
    if not np.all((a > 0) & (a < 2)):
        raise ValueError(f"step_lr must lie in (0, 2 * sigma_end**2) = (0, {2 * sigma_end**2:g})")
    # The simplified b has no 0/0 as ε → 0, unlike the paper's form.
    b = 2.0 / (2.0 - a)
    return (1.0 - a) ** (2 * n_steps_each) * (gamma**2 - b) + b


def langevin_step_size(gamma: float, sigma_end: float, n_steps_each: int) -> float:
    """Technique 4: the step size ε that brings s_T²/σ² closest to 1.

    A grid search over 1e6 evenly spaced interior points of (0, 2σL²), spacing 2σL²/1e6
    (2e-10 at σL = 0.01). The ratio exceeds 1 for every ε, so this is its minimum. With the
    paper's ladders it reproduces the configs: CIFAR-10 6.18e-6 (config 6.2e-6), CelebA 3.34e-6
    (3.3e-6), LSUN bedroom/tower 1.77e-6 (1.8e-6), FFHQ 8.93e-7 (9e-7); LSUN church gives
    2.31e-6 where its config uses 4.9e-6.

    Args:
      gamma: γ > 1, the ladder's actual ratio (σ1/σL)^(1/(L−1)).
      sigma_end: σL > 0, the smallest noise level, in pixel units of images scaled to [0, 1].
      n_steps_each: T ≥ 1, Langevin steps per noise level.

    Returns:
      ε, the step size at σL (α_i = ε·σ_i²/σL²).

    Raises:
      ValueError: if γ, σL or T is out of range.
    """
    _check_langevin_args(gamma, sigma_end, n_steps_each)
    step_lrs = np.linspace(0.0, 2.0 * sigma_end**2, _STEP_GRID_POINTS + 2)[1:-1]
    ratios = langevin_variance_ratio(step_lrs, gamma, sigma_end, n_steps_each)
    return float(step_lrs[np.argmin(np.abs(ratios - 1.0))])


def _check_langevin_args(gamma: float, sigma_end: float, n_steps_each: int) -> None:
    if not gamma > 1:
        raise ValueError(f"gamma must exceed 1 (sigma_{{i-1}} / sigma_i), got {gamma}")
    if not 0 < sigma_end < math.inf:
        raise ValueError(f"sigma_end must be positive and finite, got {sigma_end}")
    if n_steps_each < 1:
        raise ValueError(f"n_steps_each must be at least 1, got {n_steps_each}")


@jax.jit
def _row_max_sq_distances(points: jax.Array, num_valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """For each row i, max over j > i of the float32 Gram-trick ‖x_i − x_j‖², and that j.

    Args:
      points: float32 (P, D), P a multiple of _DISTANCE_BLOCK_ROWS; rows from num_valid on are
        padding.
      num_valid: int32 scalar, the number of real rows.

    Returns:
      (row_max, row_argmax), shapes (P,) float32 and (P,) int32; row_max is −inf for rows with
      no real j > i (the last real row and the padding).
    """
    block = _DISTANCE_BLOCK_ROWS
    num_blocks = points.shape[0] // block
    blocks = points.reshape(num_blocks, block, points.shape[1])
    sq_norms = jnp.sum(points * points, axis=1).reshape(num_blocks, block)
    offsets = jnp.arange(block)

    def row_block(i):
        rows, row_norms = blocks[i], sq_norms[i]
        row_ids = i * block + offsets

        def col_block(j, carry):
            best, best_col = carry
            cols = jax.lax.dynamic_index_in_dim(blocks, j, keepdims=False)
            col_norms = jax.lax.dynamic_index_in_dim(sq_norms, j, keepdims=False)
            col_ids = j * block + offsets
            gram = jnp.matmul(rows, cols.T, precision=jax.lax.Precision.HIGHEST)
            sq_dists = row_norms[:, None] + col_norms[None, :] - 2.0 * gram
            # Upper triangle only: pair (i, j) with i < j belongs to row i, and the
            # certification in max_pairwise_distance relies on that.
            valid = (col_ids[None, :] > row_ids[:, None]) & (col_ids[None, :] < num_valid)
            sq_dists = jnp.where(valid, sq_dists, -jnp.inf)
            block_max = jnp.max(sq_dists, axis=1)
            block_col = j * block + jnp.argmax(sq_dists, axis=1).astype(jnp.int32)
            better = block_max > best
            return jnp.where(better, block_max, best), jnp.where(better, block_col, best_col)

        init = (jnp.full((block,), -jnp.inf, jnp.float32), jnp.zeros((block,), jnp.int32))
        return jax.lax.fori_loop(i, num_blocks, col_block, init)

    row_max, row_argmax = jax.lax.map(row_block, jnp.arange(num_blocks))
    return row_max.reshape(-1), row_argmax.reshape(-1)


def _float32_gram_error_factor(dim: int) -> float:
    """c such that |float32 Gram-trick d² − exact d²| ≤ c·(‖x_i‖ + ‖x_j‖)².

    With u = 2⁻²⁴ and γ_D = Du/(1 − Du): rounding the inputs to float32 moves d² by at most
    2u·S² (S = ‖x_i‖ + ‖x_j‖); the two squared norms and the inner product, each a length-D
    dot product summed in any order, err by γ_D times ‖x_i‖², ‖x_j‖² and 2‖x_i‖‖x_j‖, together
    γ_D·S²; the two float32 additions add about 2u·S². Doubling that first-order sum covers the
    second-order terms and the float64 evaluation of the norms. Valid for any summation order
    and for fused multiply-adds, not for matmuls that drop below float32 (bfloat16 passes).
    """
    unit = 2.0**-24
    if dim * unit >= 0.5:
        return math.inf
    gamma_dim = dim * unit / (1.0 - dim * unit)
    return 2.0 * (gamma_dim + 4.0 * unit)


def _float64_sq_norms(points: np.ndarray) -> np.ndarray:
    return np.concatenate([
        np.sum(np.square(points[start:start + _FLOAT64_CHUNK_ROWS], dtype=np.float64), axis=1)
        for start in range(0, points.shape[0], _FLOAT64_CHUNK_ROWS)
    ])


def _exact_sq_distance(points: np.ndarray, i: int, j: int) -> float:
    diff = points[i].astype(np.float64) - points[j].astype(np.float64)
    return float(diff @ diff)


def _float64_farthest_pair(points: np.ndarray, sq_norms: np.ndarray,
                           rows: np.ndarray) -> tuple[int, int]:
    """The pair (i, j), i in `rows` (ascending) and j > i, of largest float64 Gram-trick d²."""
    best, best_pair = -math.inf, (-1, -1)
    num = points.shape[0]
    for row_start in range(0, rows.size, _FLOAT64_CHUNK_ROWS):
        row_ids = rows[row_start:row_start + _FLOAT64_CHUNK_ROWS]
        row_points = points[row_ids].astype(np.float64)
        for col_start in range(row_ids[0] + 1, num, _FLOAT64_CHUNK_ROWS):
            col_ids = np.arange(col_start, min(col_start + _FLOAT64_CHUNK_ROWS, num))
            gram = row_points @ points[col_ids].astype(np.float64).T
            sq_dists = sq_norms[row_ids][:, None] + sq_norms[col_ids][None, :] - 2.0 * gram
            sq_dists[col_ids[None, :] <= row_ids[:, None]] = -math.inf
            flat = int(np.argmax(sq_dists))
            r, c = divmod(flat, col_ids.size)
            if sq_dists[r, c] > best:
                best, best_pair = float(sq_dists[r, c]), (int(row_ids[r]), int(col_ids[c]))
    return best_pair


def max_pairwise_distance(images: ArrayLike, max_points: int = 10_000, seed: int = 0) -> float:
    """Technique 1: σ1, the largest Euclidean distance between two images.

    When there are more than `max_points` images, the maximum is over the subset
    `np.random.default_rng(seed).choice(N, max_points, replace=False)`, as in the paper.

    The answer is exact up to float64 round-off, not a float32 estimate. A blocked, jit-compiled
    float32 pass computes, for every image i, the largest ‖x_i − x_j‖² over j > i with the Gram
    trick ‖x_i‖² + ‖x_j‖² − 2x_i·x_j, holding only one 512×512 tile of distances at a time.
    That value is off by at most a rigorous rounding bound E_i (about 2D·2⁻²⁴·(‖x_i‖ + max‖x‖)²).
    The distance of the best float32 pair, recomputed in float64, is a lower bound on the
    answer; every image whose float32 maximum plus E_i still reaches it is searched again over
    all its partners in float64, and the best pair found is measured directly from its pixel
    differences. So the returned value is the float64 distance of a real pair, and no pair is
    longer by more than float64 round-off (relative ~D·2⁻⁵³·(‖x_i‖ + ‖x_j‖)²/d²). The bound
    assumes the float32 matmul is a plain float32 dot product (CPU, or GPU at
    Precision.HIGHEST), and no float32 overflow or underflow.

    Args:
      images: array-like of shape (N, ...), e.g. NHWC, pixel values in [0, 1]; each image is
        flattened. Any real dtype.
      max_points: use a random subset of this many images when N exceeds it; at least 2.
      seed: seed of the subset draw.

    Returns:
      The maximum distance, in pixel units.

    Raises:
      ValueError: for fewer than 2 images, empty images, non-finite values or max_points < 2.
    """
    points = np.asarray(images)
    if points.ndim == 0 or points.shape[0] < 2:
        raise ValueError(f"need at least 2 images to measure a distance, got shape {points.shape}")
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    num = points.shape[0]
    points = points.reshape(num, -1)
    if points.shape[1] == 0:
        raise ValueError(f"images have no pixels: shape {np.shape(images)}")
    if num > max_points:
        subset = np.random.default_rng(seed).choice(num, size=max_points, replace=False)
        # Sorted for memory locality; the maximum does not depend on the order.
        points = points[np.sort(subset)]
        num = max_points
    if not np.all(np.isfinite(points)):
        raise ValueError("images contain NaN or infinite values")

    padded = -(-num // _DISTANCE_BLOCK_ROWS) * _DISTANCE_BLOCK_ROWS
    points32 = np.zeros((padded, points.shape[1]), np.float32)
    points32[:num] = points
    row_max, row_argmax = jax.device_get(_row_max_sq_distances(points32, np.int32(num)))
    row_max = row_max[:num].astype(np.float64)

    sq_norms = _float64_sq_norms(points)
    norms = np.sqrt(sq_norms)
    margins = _float32_gram_error_factor(points.shape[1]) * (norms + norms.max()) ** 2
    top = int(np.argmax(row_max))
    lower_bound = _exact_sq_distance(points, top, int(row_argmax[top]))
    uncertain = np.flatnonzero(row_max + margins >= lower_bound)
    i, j = _float64_farthest_pair(points, sq_norms, uncertain)
    return math.sqrt(max(lower_bound, _exact_sq_distance(points, i, j)))
