"""The Gaussian mixture whose noised score is known in closed form: the exact-score case on which the
samplers are tested (tests/test_sampling_methods.py) and scored (benchmarks/sampler_quality.py --mixture).

Every pixel of an 8×8 grey image is an independent draw of 0.25·N(−6, 0.5²) + 0.75·N(2, 1²). Its mean is
0, the prior's: the probability-flow ODE maps the prior's quantiles to the data's, so a prior off by 2 of
the tests' σ1 = 50 would shift the weights by 1.3%.

Test support, not library code: it lives with the tests, and the benchmark (which puts the repository's
root on sys.path) imports it from here.
"""
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

WEIGHTS, MEANS, STDS = np.array([0.25, 0.75]), np.array([-6.0, 2.0]), np.array([0.5, 1.0])
IMAGE_SHAPE = (8, 8, 1)
BETWEEN_MODES = -2.0  # 8 of the left mode's σ and 4 of the right's from them: splits the samples by mode


def score(x: jax.Array, sigma: jax.Array) -> jax.Array:
    """∇x log of the mixture convolved with N(0, σ²), per pixel; `sigma` (B,) one level per image."""
    var = STDS**2 + sigma.reshape((-1,) + (1,) * (x.ndim - 1))[..., None]**2
    log_p = np.log(WEIGHTS) - 0.5 * jnp.log(var) - 0.5 * (x[..., None] - MEANS)**2 / var
    return jnp.sum(jax.nn.softmax(log_p, axis=-1) * (MEANS - x[..., None]) / var, axis=-1)


def cdf(values: np.ndarray) -> np.ndarray:
    """The mixture's CDF at each of `values`."""
    return np.sum(WEIGHTS * stats.norm.cdf((np.asarray(values)[..., None] - MEANS) / STDS), axis=-1)
