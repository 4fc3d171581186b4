"""NCSNv2 in JAX: train, sample, inpaint, interpolate, tune, stats or eval, as chosen by --mode.

    python main.py --config configs/cifar10.py --workdir runs/cifar10 --mode train

The same program as the installed `ncsn-jax` command: the flags and the dispatch are in
`ncsn_jax/cli.py`, the logic in the importable modules of `ncsn_jax`.

Everything happens under `__main__`: a process that multiprocessing starts with "spawn" imports the
program's main file (as `__mp_main__`), which must then cost nothing. (The input pipeline's decoding workers
start with `python -c` and import neither.)
"""
if __name__ == "__main__":
    # Before anything allocates: restart with mimalloc preloaded (ncsn_jax/runtime/cpu_runtime.py says why).
    from ncsn_jax.runtime import cpu_runtime

    cpu_runtime.exec_with_mimalloc()

    from ncsn_jax import cli

    cli.run_cli()
