"""NCSNv2 in JAX: train, sample, inpaint, interpolate, tune, stats or eval, as chosen by --mode.

    python main.py --config configs/cifar10.py --workdir runs/cifar10 --mode train

This file only parses flags, starts multi-host JAX when asked, and dispatches; the logic lives in the
importable modules of ncsn_jax (train.train_and_evaluate, generate, tune, evaluate). Config values can be
overridden on the command line, e.g. --config.training.batch_size=64. User errors (a bad value, a
missing dataset or checkpoint) end with one line saying what to do and exit code 1.
"""
import sys

if __name__ == "__main__":
    # Before anything allocates: restart with mimalloc preloaded (ncsn_jax/cpu_runtime.py says why).
    from ncsn_jax import cpu_runtime

    cpu_runtime.exec_with_mimalloc()

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ncsn_jax import config_checks, evaluate, generate, train, tune  # noqa: E402

MODES = ("train", "sample", "inpaint", "interpolate", "tune", "stats", "eval")

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/cifar10.py.", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and images.")
flags.DEFINE_enum("mode", "train", MODES, "What to do.")
flags.DEFINE_integer("checkpoint_step", None,
                     "Sample from (or, with --mode eval, evaluate only) this checkpoint step (default: the latest).")
flags.DEFINE_string("official_checkpoint", None, "Sample from an official PyTorch checkpoint_<step>.pth.")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (TPU pods, multi-node GPU).")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS

# Errors a user can act on: printed as one line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, ImportError, train.NonFiniteLossError)


def run(config, workdir: str, mode: str, checkpoint_step: int | None = None,
        official_checkpoint: str | None = None) -> None:
    """Checks the config, then does what `mode` says (see the module docstring)."""
    config_checks.check_config(config)
    if mode == "tune":
        tuned = tune.tune(config)
        print(tune.report(tuned, config))
        return
    if not workdir:
        raise ValueError(f"--workdir is required for --mode {mode}")
    if mode == "train":
        train.train_and_evaluate(config, workdir)
    elif mode == "stats":
        evaluate.run_stats(config, workdir)
    elif mode == "eval":
        evaluate.run_eval(config, workdir, checkpoint_step)
    else:
        generate.run_mode(config, workdir, mode, checkpoint_step, official_checkpoint)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.multihost:
        jax.distributed.initialize()
    logging.info("JAX process %d of %d, %d devices", jax.process_index(), jax.process_count(), jax.device_count())
    try:
        run(FLAGS.config, FLAGS.workdir, FLAGS.mode, FLAGS.checkpoint_step, FLAGS.official_checkpoint)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
