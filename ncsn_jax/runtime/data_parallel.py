"""Data parallelism over every device of every host: one ('data',) mesh, state replicated, batch sharded.

This is the pmap programming model written with `jax.jit` and shardings: the train step is an ordinary
jitted function, and because its batch argument is split along the mesh's 'data' axis while the state is
replicated, the compiler partitions the computation and inserts the gradient all-reduce itself.
"""
from __future__ import annotations

import collections
from typing import Any, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ncsn_jax.errors import ConfigError

DATA_AXIS = "data"


def data_mesh(devices: Any = None) -> Mesh:
    """A 1-D mesh named 'data' over `devices` (default: all devices of all hosts)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def per_host_batch_size(global_batch_size: int, mesh: Mesh, what: str = "training.batch_size") -> int:
    """The number of examples each host loads for a global batch, after checking it splits evenly.

    Raises:
      ConfigError: the batch does not divide over the devices (the message names the config field).
    """
    devices = mesh.devices.size
    if global_batch_size <= 0 or global_batch_size % devices:
        raise ConfigError(
            f"{what} {global_batch_size} is not divisible by the {devices} devices; "
            f"use a multiple of {devices}, e.g. --config.{what}={max(devices, global_batch_size // devices * devices)}"
        )
    return global_batch_size // jax.process_count()


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every array of `tree` on every device of the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh's 'data' axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def shard_host_batch(host_batch: np.ndarray, mesh: Mesh) -> jax.Array:
    """Assembles each host's local batch into one global array sharded along the batch axis."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), host_batch)


def prefetch_to_mesh(host_batches: Iterable[np.ndarray], mesh: Mesh, size: int = 2) -> Iterator[jax.Array]:
    """Yields global sharded batches, keeping `size` of them in flight so host-to-device copies overlap
    with the running step (device_put is asynchronous)."""
    queue: collections.deque = collections.deque()
    for batch in host_batches:
        queue.append(shard_host_batch(batch, mesh))
        if len(queue) == size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
