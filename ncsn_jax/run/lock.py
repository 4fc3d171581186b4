"""A workdir belongs to one run at a time: an advisory lock that a killed run cannot leave behind.

Two trainers on one workdir would interleave their steps in one `metrics.jsonl` and save over each
other's checkpoints; two eval sweeps would share one feature cache. `WorkdirLock` takes a `flock` on
`<workdir>/.<role>.lock`: the kernel releases it when the process ends, however it ends (SIGKILL
included), so a stale lock file never blocks a rerun. The file holds who took it, for the error message.

Only process 0 locks (every process of a multi-host run works on the same workdir), and only on a
local disk. Object storage (gs://, s3://) has no locks that a killed process releases, so there the lock
does nothing but say so in the log: making sure that one run of each role uses a bucket's workdir at a
time is the user's part (a stale lock object could block a preempted job's own restart, which is worse).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from typing import Any

import jax
from absl import logging

from ncsn_jax.errors import WorkdirError
from ncsn_jax.run import files


class WorkdirLock:
    """Holds `<workdir>/.<role>.lock` while in use (a context manager).

    Args:
      workdir: the run's folder (created when missing).
      role: what the run does to the folder, e.g. "train" or "eval": runs of different roles may share
        a workdir (sampling or evaluating while training runs), runs of the same role may not.

    Raises (on entering):
      WorkdirError: another live process holds the lock; the message names it.
    """

    def __init__(self, workdir: str, role: str):
        self._path = files.lock_file(workdir, role)
        self._workdir, self._role = workdir, role
        self._fd: int | None = None

    def __enter__(self) -> WorkdirLock:
        if jax.process_index() != 0:
            return self
        if files.is_remote(self._workdir):
            logging.warning("%s is on object storage, which has no locks: nothing stops another %s run from "
                            "using it at the same time, so make sure none does", self._workdir, self._role)
            return self
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.read(fd, 4096))
            os.close(fd)
            raise WorkdirError(
                f"{self._workdir} is in use by another {self._role} run ({holder}): wait for it to end or stop "
                "it, or use another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime(
            "%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.orig_argv)}).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _describe(contents: bytes) -> str:
    try:
        holder = json.loads(contents)
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: {holder['command']}"
    except (ValueError, KeyError, TypeError):
        return "a process that is starting"
