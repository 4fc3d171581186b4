"""Where the program runs: the CPU settings (`cpu_runtime`), the data-parallel mesh over every device
(`data_parallel`), several JAX processes joined and ended together (`processes`), and SIGTERM and Ctrl-C as
a request to save and stop (`stop_signals`).

Imports nothing: `ncsn_jax/__init__.py` applies `cpu_runtime` before JAX starts, in every process,
the input pipeline's decoding workers (which import no JAX) too."""
