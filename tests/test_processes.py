"""Several JAX processes for real: 2 processes × 1 CPU device on 127.0.0.1, through main.py, beside
1 process × 2 devices fed the same global batches; a lost process, a damaged checkpoint, signals."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ncsn_jax import cli
from ncsn_jax.errors import ConfigError
from ncsn_jax.runtime import processes
from tests.test_main import REPO, TINY_MNIST, saved_params, tiny_mnist

# Every run below: 8 images a step, 4 per process (or per device), checkpoints at 2, 4, 6.
RUN = {**TINY_MNIST, "training.n_iters": 4, "training.snapshot_freq": 2, "training.log_freq": 1,
       "training.snapshot_samples": 4, "sampling.batch_size": 4, "sampling.num_samples": 4}

# The reference: one process with two devices whose input pipeline yields, as the global batch, host 0's
# batch then host 1's, as the two processes' `make_array_from_process_local_data` assembles it.
REFERENCE = """
import functools, sys
import numpy as np
from ncsn_jax import cli
from ncsn_jax.data import pipeline

read = pipeline.get_dataset

def as_two_hosts(config, split, batch_size, *, start_step=0, repeat=True, **unused):
    hosts = [read(config, split, batch_size // 2, start_step=start_step, repeat=repeat, process_index=i,
                  process_count=2) for i in range(2)]
    return (np.concatenate(pair) for pair in zip(*hosts))

pipeline.get_dataset = as_two_hosts
cli.run_cli()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main_args(workdir, mode, overrides):
    args = ["main.py", "--config", "configs/mnist.py", "--workdir", str(workdir), "--mode", mode]
    return args + [f"--config.{key}={value}" for key, value in overrides.items()]


def environment(devices):
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}


def start_processes(workdir, mode="train", num_processes=2, extra=(), **overrides):
    """The processes of one run, each writing its stderr to `<workdir>.<mode>.<id>.log` (a pipe could fill)."""
    port = free_port()
    processes = []
    for i in range(num_processes):
        log = open(f"{workdir}.{mode}.{i}.log", "w", encoding="utf-8")  # pylint: disable=consider-using-with
        processes.append(subprocess.Popen(
            [sys.executable, *main_args(workdir, mode, {**RUN, **overrides}), "--multihost",
             f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}", f"--process_id={i}",
             "--heartbeat_timeout=10", "--initialization_timeout=120", *extra],
            cwd=REPO, env=environment(1), stdout=subprocess.DEVNULL, stderr=log))
        processes[-1].log = log
    return processes


def exit_codes_and_errors(processes, timeout=400):
    """The exit code and stderr of each process; every one is ended by its PID, whatever happens."""
    deadline = time.time() + timeout
    try:
        for process in processes:
            process.wait(timeout=max(1, deadline - time.time()))
    finally:
        for process in processes:
            process.kill()
            process.wait()
            process.log.close()
    return [p.returncode for p in processes], [pathlib.Path(p.log.name).read_text() for p in processes]


def run_reference(workdir, mode="train", extra=(), **overrides):
    result = subprocess.run([sys.executable, "-c", REFERENCE, *main_args(workdir, mode, {**RUN, **overrides})[1:],
                             *extra],
                            cwd=REPO, env=environment(2), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]


def restored_arrays(workdir, step):
    """Every array of a checkpoint (step, θ, Adam, θ', ladder), restored here (four devices)."""
    state = saved_params(workdir, step, tiny_mnist())
    return [np.asarray(leaf) for leaf in jax.tree.leaves(state)]


def train_losses(workdir):
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(line["step"], line[name]) for line in lines for name in ("train/loss", "test/loss_ema") if name in line]


def test_a_missing_coordinator_or_process_ends_every_process_with_one_line(tmp_path):
    joined = "error: not every process joined the coordinator at 127.0.0.1:"
    # Process 1 of 2 alone: the coordinator (process 0) never starts.
    port = free_port()
    start = time.time()
    result = subprocess.run(
        [sys.executable, *main_args(tmp_path / "a", "train", RUN), "--multihost",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", "--process_id=1",
         "--initialization_timeout=5"],
        cwd=REPO, env=environment(1), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and time.time() - start < 60, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(joined + f"{port} within 5 s: start the same command")
    # Two processes told that the run has three: both give up, each with the same line.
    codes, errors = exit_codes_and_errors(start_processes(
        tmp_path / "b", num_processes=2, extra=["--num_processes=3", "--initialization_timeout=5"]))
    assert codes == [1, 1] and all(e.strip().splitlines()[-1].startswith(joined) for e in errors), errors
    # The cluster flags go together (checked before anything starts).
    with pytest.raises(ConfigError, match="--coordinator_address, --num_processes and --process_id go together"):
        processes.start(None, 2, None)
    with pytest.raises(ConfigError, match=r"--process_id 2 is not in \[0, --num_processes=2\)"):
        processes.start("127.0.0.1:1", 2, 2)


# What the watchdog does with JAX's private coordination client, in a one-process run (the client's home
# in JAX and its methods may move in any release: this fails fast where the two-process tests would hang).
WATCHDOG_CLIENT = """
import sys
from ncsn_jax.runtime import processes
processes.start(sys.argv[1], 1, 0)
watchdog = processes._Watchdog(heartbeat_timeout=10)
client, key = watchdog._client, processes._KEY.format(0)
print(watchdog._try_get(0))
for beat in ("1", "2"):
    client.key_value_set(key, beat, allow_overwrite=True)
print(watchdog._try_get(0))
"""


def test_the_watchdogs_coordination_client_works_with_this_jax():
    result = subprocess.run([sys.executable, "-c", WATCHDOG_CLIENT, f"127.0.0.1:{free_port()}"], cwd=REPO,
                            env=environment(1), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["None", "2"]  # not beaten yet (NOT_FOUND), then the last beat


def kill_once(processes, condition, what, timeout=300):
    """SIGKILL every process as soon as `condition()` holds (checked every 50 ms)."""
    deadline = time.time() + timeout
    try:
        while not condition():
            ended = [p.poll() for p in processes]
            assert ended == [None] * len(processes), f"a process ended before {what}: {ended}"
            assert time.time() < deadline, f"no {what} within {timeout} s"
            time.sleep(0.05)
    finally:
        for process in processes:
            process.kill()
        codes, errors = exit_codes_and_errors(processes)
    assert codes == [-signal.SIGKILL] * len(processes), errors[0][-3000:]


def committed_steps(workdir):
    # Orbax writes a checkpoint under a temporary name and renames it to its step once committed.
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_two_processes_train_resume_and_evaluate_as_one_process_with_two_devices(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"

    # SIGKILL both processes once checkpoint 4 is committed, and damage the latest checkpoint they left:
    # run again, both processes see the damage, agree on the checkpoint before it and resume from there.
    processes = start_processes(two, **{"training.n_iters": 1000})
    kill_once(processes, lambda: "saved checkpoint 4 " in pathlib.Path(processes[0].log.name).read_text(),
              "checkpoint 4")
    damaged = committed_steps(two)[-1]
    for path in (two / "checkpoints" / str(damaged) / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(b"")
    end = damaged + 2
    codes, errors = exit_codes_and_errors(start_processes(two, **{"training.n_iters": end}))
    assert codes == [0, 0], errors[0][-3000:] + errors[1][-3000:]
    for stderr in errors:
        assert f"checkpoint {damaged} " in stderr and "cannot be read" in stderr
        assert f"resuming from step {damaged - 2}" in stderr
    run_reference(one, **{"training.n_iters": end})

    # The same global batches and keys on the same two-device layout: the same arrays, bit for bit.
    for a, b in zip(restored_arrays(two, end), restored_arrays(one, end)):
        np.testing.assert_array_equal(a, b)
    # Process 0 alone writes the logs and grids: one line per step and metric (the steps the killed run
    # logged after the checkpoint it resumed from are replaced), one event file per run.
    assert train_losses(two) == train_losses(one)
    assert len(list((two / "tensorboard").iterdir())) == 2
    grids = {p.name for p in (two / "samples").iterdir()}
    assert {f"samples_{step:07d}.png" for step in range(2, end + 1, 2)} <= grids
    assert all(int(name[8:15]) % 2 == 0 for name in grids), grids

    # --mode eval: process 1 killed after the first cached batch, process 0 ends by itself within the
    # heartbeat timeout (10 s) and a little, with one line; run again, the eval scores as the reference's.
    stats = tmp_path / "stats"
    cli.run(tiny_mnist(), str(stats), "stats")
    evaluation = {"eval.stats_path": str(stats / "stats" / "mnist_train.npz"), "eval.num_samples": 48,
                  "eval.final_num_samples": 0, "eval.kid_subsets": 5, "eval.kid_subset_size": 8,
                  "sampling.n_steps_each": 20}
    only = [f"--checkpoint_step={end}"]
    processes = start_processes(two, "eval", extra=only, **evaluation)
    kill_once(processes[1:], lambda: list((two / "eval").glob("step_*/batch_00000.npz")), "cached batch")
    killed_at = time.time()
    processes[0].wait(timeout=60)
    waited = time.time() - killed_at
    codes, errors = exit_codes_and_errors(processes[:1])
    assert codes == [1] and waited < 25, (waited, errors[0][-3000:])
    # Whichever notices first: its collective (gloo sees the closed connection) or its watchdog.
    last = errors[0].strip().splitlines()[-1]
    assert "Traceback" not in errors[0], errors[0][-3000:]
    assert (last.startswith("error: lost contact with another process of this run")
            or last.startswith("error: process 1 of 2 has given no sign of life for 10 s")), last
    assert last.endswith("resume from the last checkpoint that all processes committed"), last
    codes, errors = exit_codes_and_errors(start_processes(two, "eval", extra=only, **evaluation))
    assert codes == [0, 0], errors[0][-3000:] + errors[1][-3000:]
    done = int(errors[0].split(" of 12 sample batches already done")[0].split()[-1])
    assert 1 <= done < 12, errors[0][-3000:]
    run_reference(one, "eval", extra=only, **evaluation)
    reports = [json.loads((workdir / "eval" / "report.json").read_text()) for workdir in (two, one)]
    assert reports[0]["checkpoints"][str(end)] == pytest.approx(reports[1]["checkpoints"][str(end)], rel=1e-6)
    (cache_two,), (cache_one,) = [list((workdir / "eval").glob("step_*")) for workdir in (two, one)]
    # The first batch's images (the grid the killed run wrote before its features), as --mode sample draws them.
    assert (cache_two / "samples.png").read_bytes() == (cache_one / "samples.png").read_bytes()
    for i in range(12):
        for name, array in np.load(cache_two / f"batch_{i:05d}.npz").items():
            np.testing.assert_array_equal(array, np.load(cache_one / f"batch_{i:05d}.npz")[name])


def test_ctrl_c_on_one_process_stops_both_at_one_step(tmp_path):
    long_run = {"training.n_iters": 1000, "training.snapshot_freq": 1000, "training.snapshot_samples": 0}
    processes = start_processes(tmp_path, **long_run)
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "metrics.jsonl").exists():
        time.sleep(0.2)
    while time.time() < deadline and len(train_losses(tmp_path)) < 3:
        time.sleep(0.2)

    # Ctrl-C on one process becomes a preemption notice (SIGTERM) to JAX's sync: both save one step and stop.
    processes[1].send_signal(signal.SIGINT)
    codes, errors = exit_codes_and_errors(processes)
    assert codes == [0, 130], errors[0][-3000:] + errors[1][-3000:]
    lines = [stderr.strip().splitlines()[-1] for stderr in errors]
    assert lines[0].startswith("stopped by SIGTERM after step ")
    step = int(lines[0].split("after step ")[1].split(":")[0])
    assert lines[1].split(":")[0] == f"stopped by SIGINT after step {step}"
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [step]
    # (A lost process: see the eval above, where process 1 is killed and process 0 ends with one line.)
