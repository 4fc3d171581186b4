"""The samplers, each a function of a score function s(x, σ) and the ladder σ1 > … > σL:

  langevin  annealed Langevin dynamics (the paper's Algorithm 1) and consistent annealed sampling, with
            their inpainting and the interpolation;
  sde       the VE SDE's predictor–corrector and probability-flow ODE samplers;
  methods   `config.sampling.method`: one record per sampler (its program, settings, config rules), and
            the sub-ladders;
  sharded   the drivers that run a method over every device of the mesh, in batches.

The Langevin samplers are this package's own names too, as the README's tour calls them
(`sampling.annealed_langevin_dynamics`).
"""
from ncsn_jax.sampling.langevin import (SamplerDiagnostics, SamplerOutput, annealed_langevin_dynamics,
                                        annealed_langevin_inpainting, annealed_langevin_interpolation,
                                        consistent_annealed_inpainting, consistent_annealed_sampling, prior_init,
                                        uniform_init)

__all__ = ["SamplerDiagnostics", "SamplerOutput", "annealed_langevin_dynamics", "annealed_langevin_inpainting",
           "annealed_langevin_interpolation", "consistent_annealed_inpainting", "consistent_annealed_sampling",
           "prior_init", "uniform_init"]
