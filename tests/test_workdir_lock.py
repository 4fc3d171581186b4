"""A workdir belongs to one run of a role at a time, and a killed run does not leave it locked."""
import os
import signal
import subprocess
import sys

import pytest

from ncsn_jax.errors import WorkdirError
from ncsn_jax.run.lock import WorkdirLock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOLD = "import sys, time; from ncsn_jax.run.lock import WorkdirLock\nwith WorkdirLock(sys.argv[1], 'train'):\n" \
       "    print('locked', flush=True); time.sleep(600)"


def hold_lock(workdir):
    """A process that takes the train lock of `workdir` and sleeps; returns once it holds the lock."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_run_is_refused_and_named(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(WorkdirError, match=rf"in use by another train run \(pid {holder.pid} on .*-c import sys"):
            with WorkdirLock(str(tmp_path), "train"):
                pass
        with WorkdirLock(str(tmp_path), "eval"):  # another role: e.g. an eval sweep while training runs
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_run_leaves_no_lock_behind(tmp_path):
    holder = hold_lock(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / ".train.lock").exists()  # the file stays; the lock went with the process
    with WorkdirLock(str(tmp_path), "train"):
        with pytest.raises(WorkdirError, match=rf"pid {os.getpid()}"):
            with WorkdirLock(str(tmp_path), "train"):
                pass
    with WorkdirLock(str(tmp_path), "train"):  # released on exit
        pass
