"""The command line (`python main.py`, or the `ncsn-jax` command of the installed package).

    ncsn-jax --config configs/cifar10.py --workdir runs/cifar10 --mode train

Parses the flags, starts multi-host JAX when asked, checks the config and dispatches by --mode to the
library (train.train_and_evaluate, sample_modes, tune, evaluation.reference and evaluation.sweep).
This is the one place where errors become exit codes: a `UserError` (and a flag or config-file error)
is printed as one `error: ...` line with exit code 1; anything else is a bug and keeps its traceback. A
run stopped by SIGTERM or Ctrl-C after saving prints which step it saved, and exits with 0 or 130.
"""
from __future__ import annotations

import os
import sys
from typing import NoReturn

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from ncsn_jax import checkpoints, config_checks, cpu_runtime, sample_modes, train, tune
from ncsn_jax.errors import UserError, WorkdirError
from ncsn_jax.stop_signals import StoppedBySignal
from ncsn_jax.evaluation import reference, sweep

MODES = ("train", *sample_modes.MODES, "tune", "stats", "eval")

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/cifar10.py.", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and images.")
flags.DEFINE_enum("mode", "train", MODES, "What to do.")
flags.DEFINE_integer("checkpoint_step", None,
                     "Sample from (or, with --mode eval, evaluate only) this checkpoint step (default: the latest).")
flags.DEFINE_string("official_checkpoint", None, "Sample from an official PyTorch checkpoint_<step>.pth.")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (TPU pods, multi-node GPU).")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def check_workdir(workdir: str) -> None:
    """Raises WorkdirError when `workdir` names something other than a folder (or a place for one)."""
    if "://" not in workdir and os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir {workdir} is a file, not a folder: choose a folder's path (it is created "
                           "when missing)")


def run(config, workdir: str | None, mode: str, checkpoint_step: int | None = None,
        official_checkpoint: str | None = None) -> None:
    """Checks the config and the workdir, then does what `mode` says."""
    config_checks.check_config(config)
    if mode == "tune":
        tuned = tune.tune(config)
        print(tune.report(tuned, config))
        return
    if not workdir:
        raise WorkdirError(f"--workdir is required for --mode {mode}")
    check_workdir(workdir)
    if mode == "train":
        train.train_and_evaluate(config, workdir)
    elif mode == "stats":
        reference.run_stats(config, workdir)
    elif mode == "eval":
        sweep.run_eval(config, workdir, checkpoint_step)
    else:
        sample_modes.run_mode(config, workdir, mode, checkpoint_step, official_checkpoint)


def fail(message: str) -> NoReturn:
    """Prints `error: <message>` as one line on stderr and exits with code 1."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag, config file or config override reported as one line.

    The config file is loaded here (ml_collections loads it when first read), so that a missing one is
    reported before anything starts.
    """
    try:
        remaining = FLAGS(argv)
        FLAGS.config.keys()  # a config file that failed to load raises at its first attribute
    except flags.Error as error:
        fail(f"{error}. See --helpfull.")
    except AttributeError as error:
        # ml_collections' error for an override of a field the config does not have:
        # AttributeError(KeyError("'batchsize'\nDid you mean \"batch_size\" instead of \"batchsize\"?")).
        if not (error.args and isinstance(error.args[0], KeyError)):
            raise
        fail(f"a --config.* override names a field that the config does not have: {error.args[0].args[0]}")
    except OSError as error:
        if "Failed loading config file" not in str(error):
            raise
        # Its message ends with the reason, e.g. "[Errno 2] No such file or directory: 'configs/nope.py'".
        fail(f"--config: {str(error).strip().splitlines()[-1].strip()}")
    return remaining


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    checkpoints.silence_abandoned_io()
    if FLAGS.multihost:
        jax.distributed.initialize()
    logging.info("JAX process %d of %d, %d devices", jax.process_index(), jax.process_count(), jax.device_count())
    try:
        run(FLAGS.config, FLAGS.workdir, FLAGS.mode, FLAGS.checkpoint_step, FLAGS.official_checkpoint)
    except UserError as error:
        fail(str(error))
    except StoppedBySignal as stopped:
        print(str(stopped), file=sys.stderr)
        sys.exit(stopped.exit_code)


def run_cli() -> None:
    """The console entry point: restarts with mimalloc on Linux (see `cpu_runtime`), then runs `main`."""
    cpu_runtime.exec_with_mimalloc()
    app.run(main, flags_parser=parse_flags)
