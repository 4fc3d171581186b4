"""A workdir belongs to one run at a time: a lock that a killed run cannot leave behind for long.

Two trainers on one workdir would interleave their steps in one `metrics.jsonl` and save over each
other's checkpoints; two eval sweeps would share one feature cache. `WorkdirLock` holds `<workdir>/.<role>.lock`,
which says who took it, for the error message:

- on a local disk, a `flock` on the file: the kernel releases it when the process ends, however it ends
  (SIGKILL included), so a stale lock file never blocks a rerun;
- on object storage (gs://), which has no locks that a dying process releases, a lease: the lock object is
  created only if absent (a generation precondition, so of two jobs starting at once exactly one gets it)
  and rewritten every third of `LEASE_SECONDS` while the run lives. A lock object not renewed for longer
  than the lease belongs to a run that died without deleting it (a preempted VM): the next run takes it
  over with a warning, deleting only that stale generation, so it waits at most one lease.

Only process 0 locks: every process of a multi-host run works on the same workdir, as one holder.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
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
        self._lease: _ObjectLease | None = None

    def __enter__(self) -> WorkdirLock:
        if jax.process_index() != 0:
            return self
        if files.is_remote(self._workdir):
            self._lease = _ObjectLease(os.fspath(self._path), self._workdir, self._role)
            self._lease.acquire()
            return self
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.read(fd, 4096))
            os.close(fd)
            raise _in_use(self._workdir, self._role, holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, _holder_record())
        self._fd = fd
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None


# How long a lock object on object storage stays valid without renewal; its holder renews it every third.
LEASE_SECONDS = 300.0


class _ObjectLease:
    """The lock object of a workdir on object storage, held by renewing it (see the module docstring)."""

    def __init__(self, url: str, workdir: str, role: str):
        import fsspec  # pylint: disable=import-outside-toplevel  (the gcs extra: only a gs:// workdir needs it)

        self._url, self._workdir, self._role = url, workdir, role
        # version_aware: `url#generation` names one generation, so that a delete spares a newer lock object.
        self._fs = fsspec.core.url_to_fs(url, skip_instance_cache=True, version_aware=True)[0]
        self._generation: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self) -> None:
        if not self._create():
            info, holder = self._read()
            age = time.time() - holder.get("renewed", 0.0) if holder else LEASE_SECONDS + 1
            if age <= LEASE_SECONDS:
                raise _in_use(self._workdir, self._role, _describe_holder(holder))
            logging.warning("%s: taking over the lock of a %s run not renewed for %.0f s, longer than its %.0f s "
                            "lease (%s)", self._workdir, self._role, age, LEASE_SECONDS, _describe_holder(holder))
            self._delete(info.get("generation"))
            if not self._create():  # another run took it over first
                raise _in_use(self._workdir, self._role, _describe_holder(self._read()[1]))
        self._renewer = threading.Thread(target=self._renew_until_stopped, name="ncsn_jax-lock-lease", daemon=True)
        self._renewer.start()

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self._generation is not None and self._live_generation() == self._generation:
            self._delete(self._generation)

    def _live_generation(self) -> str | None:
        """The generation of the lock object now in the bucket (None when there is none)."""
        self._fs.invalidate_cache(self._url)
        try:
            return self._fs.info(self._url).get("generation")
        except FileNotFoundError:
            return None

    def _create(self) -> bool:
        """Writes the lock object if there is none; whether it did."""
        try:
            self._fs.pipe_file(self._url, _holder_record(), mode="create")
        except FileExistsError:
            return False
        self._generation = self._live_generation()
        return True

    def _read(self) -> tuple[dict, dict | None]:
        """The lock object's metadata ({} when there is none) and its holder record (None when unreadable)."""
        self._fs.invalidate_cache(self._url)
        try:
            info = self._fs.info(self._url)
            contents = self._fs.cat_file(self._url)
        except FileNotFoundError:
            return {}, None
        try:
            holder = json.loads(contents)
        except ValueError:
            return info, None
        return info, holder if isinstance(holder, dict) else None

    def _delete(self, generation: str | None) -> None:
        """Deletes the lock object of `generation` only (not one that another run wrote since)."""
        target = f"{self._url}#{generation}" if generation else self._url
        try:
            self._fs.rm_file(target)
        except FileNotFoundError:
            pass
        self._fs.invalidate_cache(self._url)

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 3):
            try:
                if self._live_generation() != self._generation:
                    logging.error("%s: the %s lock was taken over by another run after this one failed to renew "
                                  "it for %.0f s; stop one of them", self._workdir, self._role, LEASE_SECONDS)
                    return
                self._fs.pipe_file(self._url, _holder_record())
                self._generation = self._live_generation()
            except Exception as error:  # pylint: disable=broad-exception-caught
                # A failed renewal is retried at the next; the lease outlasts two of them.
                logging.warning("%s: could not renew the %s lock (%s)", self._workdir, self._role, error)


_STARTED = time.strftime("%Y-%m-%d %H:%M:%S")  # when this process began, as the holder record names it


def _holder_record() -> bytes:
    """Who holds the lock, for another run's error message, and (on object storage) when it last renewed it."""
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": _STARTED,
                       "renewed": time.time(), "command": " ".join(sys.orig_argv)}).encode()



def _in_use(workdir: str, role: str, holder: str) -> WorkdirError:
    return WorkdirError(f"{workdir} is in use by another {role} run ({holder}): wait for it to end or stop it, or "
                        "use another --workdir")


def _describe(contents: bytes) -> str:
    try:
        holder = json.loads(contents)
    except ValueError:
        holder = None
    return _describe_holder(holder if isinstance(holder, dict) else None)


def _describe_holder(holder: dict | None) -> str:
    try:
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: {holder['command']}"
    except (KeyError, TypeError):
        return "a process that is starting"
