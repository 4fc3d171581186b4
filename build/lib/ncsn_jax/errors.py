"""The errors a user can act on: raised where the condition is found, with a message that says what to do.

`main.py` prints a `UserError` as one `error: ...` line and exits with code 1; any other exception is a
bug and keeps its traceback. Library functions that check only their own arguments raise `ValueError`
(a caller's mistake, not a user's); the program's entry points turn a user's input into arguments only
after `config_checks` has vetted it, so those never reach the user as such.
"""
from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: a config value, missing data, a checkpoint, a workdir."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the field and what to set it to."""


class DataError(UserError):
    """The dataset is missing, unreadable or too small; the message says where it was looked for."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """No checkpoint at the place or step asked for; the message says what to do."""


class UnreadableCheckpointError(UserError):
    """A checkpoint's files are damaged or missing; the message names the step, the file and the reason."""


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (a full disk, a quota, permissions); the earlier ones are intact."""


class CheckpointMismatchError(UserError, ValueError):
    """The checkpoints in a workdir are of another network or config than the one asked for."""


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite; the message names the step and what is kept."""


class MissingWeightsError(UserError, FileNotFoundError):
    """Weights a feature extractor needs (the FID Inception) are neither on disk nor downloadable."""


class WorkdirError(UserError):
    """The workdir cannot be used: it is a file, is in use by another run, or a write to it failed."""
