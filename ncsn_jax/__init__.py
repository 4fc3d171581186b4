"""ncsn_jax: NCSNv2 score-based generative models (Song & Ermon, 2020) in JAX/Flax."""
