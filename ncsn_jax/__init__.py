"""ncsn_jax: NCSNv2 score-based generative models (Song & Ermon, 2020) in JAX/Flax.

Importing the package sets one XLA:CPU flag before JAX starts (see `ncsn_jax.runtime.cpu_runtime`): CPU
convolutions run on XLA's own kernels, which train the networks about 1.5 times as fast.
"""
from ncsn_jax.runtime import cpu_runtime

cpu_runtime.use_eigen_convolutions()
