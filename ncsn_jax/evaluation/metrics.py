"""Sample-quality metrics on feature vectors: Fréchet distance, Inception Score, KID.

Every metric here works on features or logits already extracted (by Inception-v3 for FID/IS/KID on
natural images, or by the digit classifier of `digits.py` for MNIST), as NumPy float64:

- Fréchet distance (Heusel et al. 2017): the distance between two Gaussians fitted to the features,
  ‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2(Σ1Σ2)^½), computed as the TTUR and pytorch-fid code compute it, so that
  published statistics files (`save_statistics` / `load_statistics`, keys `mu` and `sigma`) give the
  numbers papers report.
- `FeatureStatistics` accumulates μ and Σ batch by batch, so 50,000 feature vectors never have to be in
  memory at once.
- Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) ‖ p(y))) over consecutive splits.
- Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD² estimator with the cubic
  polynomial kernel, averaged over random subsets, as torch-fidelity and clean-fid compute it.
"""
from __future__ import annotations

import os
import zipfile
from typing import BinaryIO

import numpy as np
import scipy.linalg
from absl import logging
from numpy.typing import ArrayLike
from scipy import special

# Largest imaginary part on the diagonal of √(Σ1Σ2) that is taken for round-off and dropped; the
# TTUR/pytorch-fid tolerance, kept so that the two accept and refuse the same inputs.
_IMAGINARY_TOLERANCE = 1e-3


def frechet_distance(
    mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(μ1, Σ1) and N(μ2, Σ2): ‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2(Σ1Σ2)^½).

    Computed in float64 with `scipy.linalg.sqrtm`. When the square root of Σ1Σ2 is not finite (a
    singular product, e.g. from fewer samples than feature dimensions), it is taken again of
    (Σ1 + εI)(Σ2 + εI), the offset TTUR and pytorch-fid add, and a warning is logged.

    Args:
      mu1: (D,) mean of the first set of features.
      sigma1: (D, D) covariance of the first set.
      mu2: (D,) mean of the second set.
      sigma2: (D, D) covariance of the second set.
      eps: the diagonal offset ε of the fallback, in squared feature units.

    Returns:
      The distance, in squared feature units (FID when the features are Inception pool3's).

    Raises:
      ValueError: shapes that are not (D,) and (D, D) for one D, or a square root whose imaginary part
        is too large to be round-off (the covariances are then not positive semi-definite).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 must be vectors of one length D, got shapes {mu1.shape} and {mu2.shape}")
    dim = mu1.shape[0]
    for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
        if sigma.shape != (dim, dim):
            raise ValueError(f"{name} must be ({dim}, {dim}) to match the means, got shape {sigma.shape}")

    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        logging.warning(
            "Fréchet distance: the square root of Σ1Σ2 is not finite (singular product); adding %g to the "
            "diagonal of both covariances, as TTUR and pytorch-fid do", eps,
        )
        offset = eps * np.eye(dim)
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imaginary = np.abs(np.diagonal(covmean).imag).max()
        if imaginary > _IMAGINARY_TOLERANCE:
            raise ValueError(
                f"√(Σ1Σ2) has an imaginary component of {imaginary:.3g} on its diagonal (round-off stays below "
                f"{_IMAGINARY_TOLERANCE:g}); are both covariances symmetric positive semi-definite?"
            )
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


class FeatureStatistics:
    """Streaming mean and covariance of feature vectors, in float64.

    Keeps the count, the sum and the sum of outer products of the features minus a shift (the mean of
    the first batch). Shifting keeps the covariance exact when the features share a large common offset,
    where Σxxᵀ/n − μμᵀ would lose every digit to cancellation.

    Example:
      stats = FeatureStatistics()
      for images in batches:
        stats.update(feature_fn(images)[0])
      mu, sigma = stats.mean_and_covariance()
    """

    def __init__(self):
        self.count = 0
        self._shift = None
        self._sum = None
        self._outer_sum = None

    def update(self, features: ArrayLike) -> None:
        """Adds a batch of feature vectors.

        Args:
          features: (N, D) features; every batch must have the same D.

        Raises:
          ValueError: a batch that is not 2-D or whose D differs from the first batch's.
        """
        features = np.asarray(features, np.float64)
        if features.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {features.shape}")
        if self._shift is None:
            if len(features) == 0:
                return
            self._shift = features.mean(axis=0)
            self._sum = np.zeros_like(self._shift)
            self._outer_sum = np.zeros((len(self._shift), len(self._shift)))
        elif features.shape[1] != len(self._shift):
            raise ValueError(f"features have D = {features.shape[1]}, the earlier batches D = {len(self._shift)}")
        centred = features - self._shift
        self.count += len(features)
        self._sum += centred.sum(axis=0)
        self._outer_sum += centred.T @ centred

    def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """The mean and the unbiased covariance (as `np.cov(features, rowvar=False)`) of all features so far.

        Returns:
          (mu, sigma): float64 (D,) and (D, D).

        Raises:
          ValueError: fewer than two feature vectors, for which the covariance is undefined.
        """
        if self.count < 2:
            raise ValueError(f"the covariance needs at least 2 feature vectors, got {self.count}")
        centred_mean = self._sum / self.count
        sigma = (self._outer_sum - self.count * np.outer(centred_mean, centred_mean)) / (self.count - 1)
        return self._shift + centred_mean, sigma


def save_statistics(path: str | os.PathLike | BinaryIO, mu: ArrayLike, sigma: ArrayLike, **extra: ArrayLike) -> None:
    """Writes μ and Σ as an `.npz` with keys `mu` and `sigma`, the TTUR/pytorch-fid statistics format.

    Args:
      path: the local file to write, used exactly as given (NumPy would append `.npz` to a bare name), or
        a binary file object (e.g. a buffer that `ncsn_jax.run.files` writes to object storage).
      mu: (D,) feature mean.
      sigma: (D, D) feature covariance.
      **extra: more arrays to store under their own keys (readers of the format ignore them).
    """
    arrays = {"mu": np.asarray(mu), "sigma": np.asarray(sigma), **{k: np.asarray(v) for k, v in extra.items()}}
    if hasattr(path, "write"):
        np.savez(path, **arrays)
        return
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_statistics(path: str | os.PathLike | BinaryIO, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reads μ and Σ from an `.npz` with keys `mu` and `sigma` (this module's, TTUR's or pytorch-fid's).

    Args:
      path: the statistics file, or a binary file object holding its contents.
      name: what the error messages call it (default: `path`).

    Returns:
      (mu, sigma): float64 (D,) and (D, D).

    Raises:
      ValueError: a file that is not an `.npz`, lacks `mu` or `sigma`, or holds mismatched shapes.
    """
    name = name or ("the statistics" if hasattr(path, "read") else os.fspath(path))
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{name!r} is not a statistics .npz file (keys mu and sigma): {error}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{name!r} holds a single array, not a statistics .npz with keys mu and sigma")
    with data:
        missing = {"mu", "sigma"} - set(data.files)
        if missing:
            raise ValueError(
                f"{name!r} lacks {' and '.join(sorted(missing))}: a statistics file has keys mu and "
                f"sigma, this one has {', '.join(data.files) or 'none'}"
            )
        mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(
            f"{name!r} holds mu of shape {mu.shape} and sigma of shape {sigma.shape}; "
            "a statistics file has (D,) and (D, D)"
        )
    return mu, sigma


def inception_score(logits: ArrayLike, num_splits: int = 10) -> tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) ‖ p(y))), its mean and standard deviation over splits.

    As the original code (Salimans et al. 2016): the samples are cut into `num_splits` runs of consecutive
    samples (split i is samples [i·N/splits, (i+1)·N/splits)), p(y) is the split's mean of p(y|x), and
    the standard deviation is the population one (ddof 0). The paper's setting is 50,000 samples in 10
    splits.

    Args:
      logits: (N, K) classifier logits, p(y|x) = softmax(logits) over the K classes.
      num_splits: how many splits, at most N.

    Returns:
      (mean, std): the score ranges from 1 (every sample gets the same p(y|x)) to K (confident and
      uniformly spread over the classes).

    Raises:
      ValueError: logits that are not 2-D, or fewer samples than splits.
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, K), got shape {logits.shape}")
    num_samples = len(logits)
    if not 1 <= num_splits <= num_samples:
        raise ValueError(f"num_splits must be in [1, N = {num_samples}] (samples per split >= 1), got {num_splits}")
    log_p = special.log_softmax(logits, axis=1)
    scores = []
    for i in range(num_splits):
        part = log_p[i * num_samples // num_splits:(i + 1) * num_samples // num_splits]
        log_marginal = special.logsumexp(part, axis=0) - np.log(len(part))
        # p·(log p − log p(y)) with p = exp(log p): a class with p = 0 adds 0, not 0·(−inf).
        kl = (np.exp(part) * (part - log_marginal)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def kernel_inception_distance(
    features_a: ArrayLike,
    features_b: ArrayLike,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: the unbiased MMD² between two sets of features, over random subsets.

    The kernel is k(x, y) = (xᵀy/D + 1)³. Each subset draws m = min(subset_size, N_a, N_b) features
    from each set without replacement and estimates
    MMD² = Σ_{i≠j} k(a_i, a_j)/(m(m−1)) + Σ_{i≠j} k(b_i, b_j)/(m(m−1)) − 2 Σ_{i,j} k(a_i, b_j)/m²,
    as Bińkowski et al. 2018, torch-fidelity and clean-fid do. The subsets are drawn as torch-fidelity
    draws them (a `np.random.RandomState(seed)`, per subset `choice(N_a, m)` then `choice(N_b, m)`),
    so with its `rng_seed` as `seed` the two give the same numbers; the legacy generator's stream is
    also frozen across NumPy versions.

    Args:
      features_a: (N_a, D) features of one set (e.g. the samples).
      features_b: (N_b, D) features of the other (e.g. the data).
      num_subsets: how many subset pairs to average over.
      subset_size: features per subset before clipping to the smaller set's size.
      seed: seed of the subset draws.

    Returns:
      (mean, std): of MMD² over the subsets (std with ddof 0, as torch-fidelity), in the kernel's
      units; papers often report the mean × 1000. The estimator is unbiased, so the mean can be slightly
      negative for two sets from one distribution.

    Raises:
      ValueError: features that are not 2-D with one D, fewer than 2 per subset, or num_subsets < 1.
    """
    features_a = np.asarray(features_a, np.float64)
    features_b = np.asarray(features_b, np.float64)
    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(
            f"features must be (N_a, D) and (N_b, D) with one D, got shapes {features_a.shape} and {features_b.shape}"
        )
    subset = min(subset_size, len(features_a), len(features_b))
    if subset < 2:
        raise ValueError(f"KID needs at least 2 features per subset, got subset size {subset} "
                         f"(subset_size {subset_size}, sets of {len(features_a)} and {len(features_b)})")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    rng = np.random.RandomState(seed)
    mmds = np.empty(num_subsets)
    for i in range(num_subsets):
        a = features_a[rng.choice(len(features_a), subset, replace=False)]
        b = features_b[rng.choice(len(features_b), subset, replace=False)]
        mmds[i] = _polynomial_mmd2(a, b)
    return float(mmds.mean()), float(mmds.std())


def _polynomial_mmd2(a: np.ndarray, b: np.ndarray) -> float:
    """The unbiased MMD² of two (m, D) sets with k(x, y) = (xᵀy/D + 1)³."""
    m, dim = a.shape
    k_aa = (a @ a.T / dim + 1.0) ** 3
    k_bb = (b @ b.T / dim + 1.0) ** 3
    k_ab = (a @ b.T / dim + 1.0) ** 3
    within = (k_aa.sum() - np.trace(k_aa) + k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    return within - 2.0 * k_ab.sum() / (m * m)
