"""The `ncsn-jax` command and `python -m ncsn_jax`: the same program as main.py (see ncsn_jax/cli.py).

Nothing heavy is imported at the top: the command's script imports this module at its top level, and so
would any process that multiprocessing starts with "spawn", which re-imports the main script. (The input
pipeline's decoding workers start with `python -c` and import neither.)
"""


def main() -> None:
    """Restarts with mimalloc on Linux (see `cpu_runtime`) before anything allocates, then runs the command line."""
    from ncsn_jax.runtime import cpu_runtime  # pylint: disable=import-outside-toplevel

    cpu_runtime.exec_with_mimalloc()
    from ncsn_jax import cli  # pylint: disable=import-outside-toplevel

    cli.run_cli()


if __name__ == "__main__":
    main()
