"""Input pipelines: NHWC float32 batches in [0, 1], sharded per host, exactly resumable.

Every dataset is a random-access list of examples (`ncsn_jax.data.sources`), so that one scheme orders
all of them:

- The split's examples are dealt to the hosts record by record: host i of n owns examples
  i, i + n, i + 2n, ... (all hosts get the same count; the last `len % n` examples are dropped).
- Each host reads its examples as one endless stream of epochs. Epoch e is a permutation of the
  host's examples drawn from `np.random.default_rng([seed, process_index, e])`; the same generator
  draws each position's horizontal flip (train split only), so batch k of a host is a pure function
  of (seed, split, process_index, process_count, k). Resuming at step k decodes nothing before it:
  (epoch, offset) = divmod(k · batch_size, examples per host), and reading starts there.
- `repeat=False` reads each example of the host once, in the split's fixed order, without flips
  (evaluation, inpainting); the last partial batch is dropped, as everywhere.
- Images that are decoded (every dataset but MNIST, which is in memory) are decoded in worker processes,
  `config.data.decode_processes` of them (None: one per core this process may use; 0: threads of this
  process instead), a few batches ahead. Processes, because decoding in Python threads holds the GIL long
  enough (TFDS parses each record in Python) that threads did not scale past one core. A worker imports
  only `sources` (no JAX) and ignores SIGINT and SIGTERM, which the training loop handles.
- An image file that does not decode (truncated, not an image) is skipped with a warning naming it:
  its place is taken by the next example of the split that decodes, so a batch is still a pure
  function of the step. More than `config.data.max_undecodable_fraction` of a split's files failing
  is an error (DataError).

TensorFlow is never imported: TFDS datasets are read through `tfds.data_source` (ArrayRecord, NumPy
decoding), so no pipeline can take accelerator memory, training needs no TensorFlow installed (only
building a TFDS dataset does), and MNIST and folders need no TFDS either.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import math
import os
import pathlib
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence

import jax
import ml_collections
import numpy as np

from ncsn_jax.data import sources
from ncsn_jax.errors import DataError

_PREFETCH_BATCHES = 3  # batches decoded ahead of the consumer (at least)
_MAX_WORKERS = 32
_MAX_EXAMPLES_PER_PROCESS_TASK = 32  # a process task's overhead is ~0.1 ms of this process's time


def get_dataset(
    config: ml_collections.ConfigDict,
    split: str,
    batch_size: int,
    *,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    repeat: bool = True,
) -> Iterator[np.ndarray]:
    """Batches of this host's shard of a split, from batch `start_step` on.

    Args:
      config: the experiment config; reads `seed` and `data` (dataset, image_size, channels,
        random_flip, path, tfds_data_dir, max_undecodable_fraction, decode_processes).
      split: "train" or "test".
      batch_size: images per batch on this host (the global batch / process_count).
      start_step: the first batch to yield, counted in this host's batches: the iterator yields what
        the one from step 0 yields from its `start_step`-th batch on.
      process_index: this host, default `jax.process_index()`.
      process_count: the number of hosts, default `jax.process_count()`.
      repeat: True: endless, reshuffled every epoch, flipped (train, if `data.random_flip`).
        False: one pass in a fixed order without flips.

    Returns:
      An iterator of float32 arrays (batch_size, H, W, C), NHWC, H = W = `data.image_size`,
      C = `data.channels`, pixel values in [0, 1]. Every batch is full.

    Raises:
      ValueError: an unknown split, a bad host index or batch size.
      DataError: a dataset that is not on this machine, or holds too few images for `batch_size` (the
        message says what to set or run).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
    if batch_size < 1 or start_step < 0:
        raise ValueError(f"batch_size must be >= 1 and start_step >= 0, got {batch_size} and {start_step}")

    spec = sources.DataSpec.from_config(config.data)

    def report(index: int, description: str, reason: str) -> None:  # only while reading, after `tally` is set
        tally.record(index, description, reason)

    source = sources.make_source(spec, split, report)
    tally = sources.UndecodableTally(source.num_examples, spec.max_undecodable_fraction)
    per_host = source.num_examples // process_count
    if batch_size > per_host:
        raise DataError(
            f"batch_size {batch_size} is larger than the {per_host} {config.data.dataset} {split} examples "
            f"on this host ({source.num_examples} in the split over {process_count} hosts)"
        )
    host_examples = process_index + process_count * np.arange(per_host)
    plan = functools.partial(
        batch_plan,
        batch_size=batch_size,
        host_examples=host_examples,
        seed=(config.seed, process_index),
        shuffle=repeat,
        flip=repeat and split == "train" and config.data.random_flip,
    )
    num_steps = None if repeat else per_host // batch_size
    return _iterate(source, tally, (spec, split, config.data.decode_processes), plan, batch_size, start_step,
                    num_steps)


def batch_plan(
    step: int,
    *,
    batch_size: int,
    host_examples: np.ndarray,
    seed: Sequence[int],
    shuffle: bool,
    flip: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Which examples make batch `step` of a host, and which of them are flipped.

    The host's stream is epoch after epoch of its examples; epoch e is ordered (and flipped) by
    `np.random.default_rng([*seed, e])`, so any batch is computed without reading the ones before.

    Args:
      step: the batch number on this host, from 0.
      batch_size: images per batch.
      host_examples: (n,) int indices into the split of the examples this host owns.
      seed: integers that fix the order, e.g. (config.seed, process_index).
      shuffle: permute every epoch; False: the order of `host_examples`, every epoch.
      flip: flip each position with probability 1/2.

    Returns:
      (indices, flips): (batch_size,) int64 indices into the split and (batch_size,) bool.
    """
    epochs, offsets = np.divmod(step * batch_size + np.arange(batch_size), len(host_examples))
    indices = np.empty(batch_size, np.int64)
    flips = np.zeros(batch_size, bool)
    for epoch in np.unique(epochs):
        order, epoch_flips = _epoch_plan(len(host_examples), tuple(seed) + (int(epoch),), shuffle, flip)
        here = epochs == epoch
        indices[here] = host_examples[order[offsets[here]]]
        flips[here] = epoch_flips[offsets[here]]
    return indices, flips


@functools.lru_cache(maxsize=4)
def _epoch_plan(num_examples: int, seed: tuple[int, ...], shuffle: bool, flip: bool):
    # Cached: a batch needs the permutation of its epoch, which costs O(examples) to draw.
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_examples) if shuffle else np.arange(num_examples)
    flips = rng.random(num_examples) < 0.5 if flip else np.zeros(num_examples, bool)
    order.flags.writeable = flips.flags.writeable = False
    return order, flips


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _iterate(
    source: sources.Source,
    tally: sources.UndecodableTally,
    workers_spec: tuple[sources.DataSpec, str, int | None],
    plan: Callable[[int], tuple[np.ndarray, np.ndarray]],
    batch_size: int,
    start_step: int,
    num_steps: int | None,
) -> Iterator[np.ndarray]:
    """Yields batch `start_step` on (to `num_steps`), decoded a few batches ahead by worker processes
    (`workers_spec`: what each builds its source from, and how many; see the module docstring) or threads."""
    spec, split, decode_processes = workers_spec
    workers = min(_MAX_WORKERS, _usable_cores() if decode_processes is None else decode_processes)
    if source.decodes and workers > 0:
        pool = _DecodingProcesses(workers, spec, split)
        submit = pool.submit
        per_task = max(1, min(_MAX_EXAMPLES_PER_PROCESS_TASK, math.ceil(batch_size / workers)))
    else:
        pool = concurrent.futures.ThreadPoolExecutor(min(_MAX_WORKERS, _usable_cores()))
        submit = functools.partial(pool.submit, sources.read_flipped_and_found, source)
        per_task, workers = source.examples_per_task, 0
    tasks_per_batch = math.ceil(batch_size / per_task)
    # Enough batches in flight that every worker process has two tasks queued.
    ahead = max(_PREFETCH_BATCHES, math.ceil(2 * workers / tasks_per_batch))
    pending = collections.deque()  # per batch: the futures of its chunks, in order
    step = start_step
    try:
        while True:
            while len(pending) < ahead and (num_steps is None or step < num_steps):
                indices, flips = plan(step)
                splits = range(per_task, len(indices), per_task)
                pending.append([submit(chunk, chunk_flips)
                                for chunk, chunk_flips in zip(np.split(indices, splits), np.split(flips, splits))])
                step += 1
            if not pending:
                return
            batch, filled = None, 0
            for future in pending.popleft():
                images, found = future.result()
                for undecodable in found:  # the split's count and the warnings, once per example
                    tally.record(*undecodable)
                if batch is None:
                    batch = np.empty((batch_size, *images.shape[1:]), np.float32)
                # uint8 to float32 in [0, 1] in one pass (the training process is the loop's serial part);
                # the same values as astype(float32) / 255.
                np.divide(images, np.float32(255), out=batch[filled:filled + len(images)], dtype=np.float32)
                filled += len(images)
            yield batch
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


class _DecodingProcesses:
    """`workers` processes that each read a split's examples (`sources.serve_decoding`).

    Started with `python -c`, not with multiprocessing: this process runs JAX's threads (so no fork), and
    multiprocessing's spawn would re-run the user's main script in every worker. Tasks go to the workers
    in turn and each worker answers in order; a thread per worker reads its answers as they come, so a
    worker never waits for the training loop to take a batch. `submit` and `shutdown` are called from
    one thread.
    """

    def __init__(self, workers: int, spec: sources.DataSpec, split: str):
        package_root = str(pathlib.Path(sources.__file__).resolve().parents[2])  # the folder that holds ncsn_jax/
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-c", "from ncsn_jax.data import sources; sources.serve_decoding()"]
        # Their own process group: a terminal's Ctrl-C goes to the training process alone, even while a
        # worker is still starting up (before `serve_decoding` ignores it); the training process saves first.
        self._processes = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                            process_group=0) for _ in range(workers)]
        self._queues = [collections.deque() for _ in range(workers)]  # each worker's unanswered futures
        self._lock = threading.Lock()
        self._next = 0
        for process in self._processes:
            self._send(process, (spec, split))
        self._readers = [threading.Thread(target=self._read_answers, args=(i,), daemon=True,
                                          name=f"ncsn_jax-decoding-{i}") for i in range(workers)]
        for reader in self._readers:
            reader.start()

    def submit(self, indices: np.ndarray, flips: np.ndarray) -> concurrent.futures.Future:
        future = concurrent.futures.Future()
        worker = self._next
        self._next = (self._next + 1) % len(self._processes)
        with self._lock:
            broken = self._processes[worker].poll() is not None
            if not broken:
                self._queues[worker].append(future)
        if broken:
            future.set_exception(self._ended_error(worker))
        else:
            try:
                self._send(self._processes[worker], (indices, flips))
            except (BrokenPipeError, OSError):
                pass  # the worker ended; its reader fails the future
        return future

    def shutdown(self, wait: bool = False, cancel_futures: bool = True) -> None:
        del wait, cancel_futures  # the workers' answers are no longer wanted: closing stdin ends them
        for process in self._processes:
            with contextlib.suppress(OSError):
                process.stdin.close()

    @staticmethod
    def _send(process: subprocess.Popen, message) -> None:
        pickle.dump(message, process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        process.stdin.flush()

    def _read_answers(self, worker: int) -> None:
        process, queue = self._processes[worker], self._queues[worker]
        while True:
            try:
                status, value = pickle.load(process.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                break
            with self._lock:
                future = queue.popleft()
            if status == "ok":
                future.set_result(value)
            else:
                future.set_exception(value)
        process.wait()
        with self._lock:
            orphans = list(queue)
            queue.clear()
        for future in orphans:
            future.set_exception(self._ended_error(worker))

    def _ended_error(self, worker: int) -> DataError:
        return DataError(
            f"a process decoding images ended abruptly (exit status {self._processes[worker].poll()}; out of "
            "memory?); set config.data.decode_processes to fewer processes, or to 0 to decode in threads of "
            "this process"
        )
