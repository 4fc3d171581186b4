"""The command line (`python main.py`, or the `ncsn-jax` command of the installed package).

    ncsn-jax --config cifar10 --mode train     # the workdir: runs/cifar10 (--workdir to choose)

Parses the flags, starts multi-host JAX when asked, checks the config and dispatches by --mode through
one table (`MODES`) to the entry points of `ncsn_jax.modes` (train, sample, tune, stats, sweep, prepare).
--config names a shipped config or a file (see the `configs` package).
This is the one place where errors become exit codes: a `UserError` (and a flag or config-file error)
is printed as one `error: ...` line with exit code 1; anything else is a bug and keeps its traceback. A
run stopped by SIGTERM or Ctrl-C after saving prints which step it saved, and exits with 0 or 130.
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import NoReturn

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from ncsn_jax import config_checks
from ncsn_jax.errors import ConfigError, UserError, WorkdirError
from ncsn_jax.modes import Mode, Options, prepare, sample, stats, sweep, train, tune
from ncsn_jax.run import checkpoints, files
from ncsn_jax.runtime import cpu_runtime, processes
from ncsn_jax.runtime.stop_signals import StoppedBySignal


def _configs_package():
    """The package of the shipped configs: `ncsn_jax.configs` installed, the checkout's `configs` folder
    otherwise (importable from the repository root, where main.py runs)."""
    try:
        return importlib.import_module("ncsn_jax.configs")
    except ModuleNotFoundError as error:
        if error.name != "ncsn_jax.configs":
            raise
        return importlib.import_module("configs")


configs = _configs_package()

# Every --mode and what it runs: a mode's entry point, `run(config, workdir, options)` (see `ncsn_jax.modes`).
MODES: dict[str, Mode] = {
    "train": train.run,
    **{mode: sample.run for mode in sample.MODES},  # sample, inpaint, interpolate
    "tune": tune.run,
    "stats": stats.run,
    "eval": sweep.run,
    "prepare": prepare.run,
}
# The modes that read or write no workdir; every other mode defaults to runs/<config name>.
NO_WORKDIR_MODES = ("tune", "prepare")

configs.define_config_flag("config", None, "The config: a name the package ships (e.g. mnist, cifar10; a "
                           "wrong name lists them) or a config file's path (e.g. configs/cifar10.py). "
                           "--config.<field>=<value> overrides one of its values.")
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and images (default: runs/<the config's name>, "
                    "e.g. runs/celeba for --config celeba or configs/celeba.py, under the current folder).")
flags.DEFINE_enum("mode", "train", list(MODES), "What to do. prepare: build the config's missing TFDS dataset "
                  '(needs network and pip install "ncsn-jax[prepare]"), or say what the dataset needs.')
flags.DEFINE_integer("checkpoint_step", None,
                     "Sample from (or, with --mode eval, evaluate only) this checkpoint step (default: the latest).")
flags.DEFINE_string("official_checkpoint", None, "Sample from an official PyTorch checkpoint_<step>.pth.")
flags.DEFINE_bool("multihost", False, "Run as one of several processes (TPU slices, GPU clusters, several CPU "
                  "machines): joins them with jax.distributed first. Without the next three flags JAX detects the "
                  "cluster (TPU VMs, SLURM, ...).")
flags.DEFINE_string("coordinator_address", None, "With --multihost: host:port where process 0 listens.")
flags.DEFINE_integer("num_processes", None, "With --multihost: the number of processes of the run.")
flags.DEFINE_integer("process_id", None, "With --multihost: this process's index, from 0.")
flags.DEFINE_integer("initialization_timeout", 300, "With --multihost: seconds to wait for every process to join.")
flags.DEFINE_integer("heartbeat_timeout", 30, "With --multihost: seconds of silence from another process after "
                     "which this one stops too.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def check_workdir(workdir: str) -> None:
    """Raises WorkdirError when `workdir` names something other than a folder (or a place for one), or a local
    folder that cannot be created or written."""
    scheme = workdir.split("://")[0] if files.is_remote(workdir) else None
    if scheme is not None and scheme not in files.REMOTE_SCHEMES:
        raise WorkdirError(f"--workdir {workdir}: a workdir is a local path or a gs:// URL ({scheme}:// is not "
                           "supported, since Orbax cannot write checkpoints there)")
    location = files.path(workdir)
    if location.exists() and not location.is_dir():
        raise WorkdirError(f"--workdir {workdir} is a file, not a folder: choose a folder's path (it is created "
                           "when missing)")
    if scheme is None and jax.process_index() == 0:
        _check_local_folder_is_writable(workdir)


def _check_local_folder_is_writable(workdir: str) -> None:
    """Creates the local folder `workdir` if missing and writes a file there, so that a place the system will
    not let this program write (a path under a file, a read-only or pseudo file system, no permission, a full
    disk) is one error before any work starts."""
    probe = os.path.join(workdir, f".write_check_{os.getpid()}")
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(probe, "wb") as file:
            file.write(b"ncsn_jax")
        os.remove(probe)
    except OSError as error:
        raise WorkdirError(f"--workdir {workdir} cannot be written here ({error.strerror or error}): choose a folder "
                           "this user can create and write") from error


def resolve_workdir(workdir: str | None, mode: str, config_file: str) -> str | None:
    """`workdir` (--workdir), or for a mode that needs one, runs/<config name>, which it logs.

    Args:
      workdir: --workdir, or None when not given.
      mode: --mode.
      config_file: --config, e.g. celeba or configs/celeba.py (default for both: runs/celeba).

    Returns:
      The workdir to use; None for a mode that needs none (tune, prepare) when none was given.
    """
    if workdir or mode in NO_WORKDIR_MODES:
        return workdir
    workdir = files.default_workdir(config_file)
    logging.info("workdir: %s (the default for --config %s; set --workdir to choose another)", workdir, config_file)
    return workdir


def run(config, workdir: str | None, mode: str, checkpoint_step: int | None = None,
        official_checkpoint: str | None = None) -> None:
    """Checks the config and the workdir, then runs `mode`'s entry point (see `MODES`)."""
    config_checks.check_config(config)
    run_mode = MODES[mode]
    if mode not in NO_WORKDIR_MODES:
        if not workdir:
            raise WorkdirError(f"--workdir is required for --mode {mode}")
        check_workdir(workdir)
    run_mode(config, workdir, Options(mode, checkpoint_step, official_checkpoint))


def fail(message: str) -> NoReturn:
    """Prints `error: <message>` as one line on stderr and exits with code 1.

    One of several processes exits at once, without waiting for the others at JAX's shutdown barrier:
    they may be waiting for it in a collective, and their watchdogs end them (see `processes`).
    """
    if jax.process_count() > 1:
        processes.end_now("error: " + str(message))
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag, config or config override reported as one line.

    The config is loaded here, so that one that cannot be loaded is reported before anything starts.
    """
    try:
        remaining = FLAGS(argv)
    except UserError as error:  # a config that cannot be loaded (configs.load)
        fail(str(error))
    except flags.Error as error:
        fail(f"{error}. See --helpfull.")
    except AttributeError as error:
        # ml_collections' error for an override of a field the config does not have:
        # AttributeError(KeyError("'batchsize'\nDid you mean \"batch_size\" instead of \"batchsize\"?")).
        if not (error.args and isinstance(error.args[0], KeyError)):
            raise
        fail(f"a --config.* override names a field that the config does not have: {error.args[0].args[0]}")
    return remaining


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}. Every value goes with a flag, e.g. --mode sample; "
             "--help lists them")
    checkpoints.silence_abandoned_io()
    try:
        workdir = resolve_workdir(FLAGS.workdir, FLAGS.mode, config_flags.get_config_filename(FLAGS["config"]))
        if FLAGS.multihost:
            processes.start(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                            initialization_timeout=FLAGS.initialization_timeout,
                            heartbeat_timeout=FLAGS.heartbeat_timeout)
        elif any(flag is not None for flag in (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)):
            raise ConfigError("--coordinator_address, --num_processes and --process_id need --multihost")
        logging.info("JAX process %d of %d, %d devices", jax.process_index(), jax.process_count(),
                     jax.device_count())
        run(FLAGS.config, workdir, FLAGS.mode, FLAGS.checkpoint_step, FLAGS.official_checkpoint)
    except UserError as error:
        fail(str(error))
    except StoppedBySignal as stopped:
        processes.finish()
        print(str(stopped), file=sys.stderr)
        sys.exit(stopped.exit_code)
    except Exception as error:  # pylint: disable=broad-exception-caught
        if jax.process_count() == 1:
            raise
        # One of several processes must not reach JAX's shutdown barrier, which would wait for the others
        # while they wait for this one in a collective.
        if processes.lost_a_peer(error):
            fail(f"lost contact with another process of this run ({str(error).strip().splitlines()[0][:300]}). "
                 "Run the same commands again on every host to resume from the last checkpoint that all "
                 "processes committed")
        traceback.print_exc()
        processes.end_now("error: process {} failed (the traceback above); the others stop within "
                          "--heartbeat_timeout".format(jax.process_index()))
    processes.finish()


# The program's own flags, which --help lists.
_PROGRAM_FLAGS = ("config", "mode", "workdir", "checkpoint_step", "official_checkpoint", "multihost",
                  "coordinator_address", "num_processes", "process_id", "initialization_timeout", "heartbeat_timeout")


def run_cli() -> None:
    """The program (main.py; the `ncsn-jax` command through ncsn_jax/__main__.py): restarts with mimalloc on
    Linux (see `cpu_runtime`), unless its entry point has already, then runs `main`."""
    cpu_runtime.exec_with_mimalloc()
    # absl's --help lists the flags of the program's main module, which defines none: it is given these.
    for name in _PROGRAM_FLAGS:
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
    app.run(main, flags_parser=parse_flags)
