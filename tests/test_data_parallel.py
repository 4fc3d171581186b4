"""Mesh helpers on four fake CPU devices."""
import jax
import numpy as np
import pytest

from ncsn_jax.runtime import data_parallel


def test_batch_must_divide_over_devices():
    mesh = data_parallel.data_mesh()
    assert data_parallel.per_host_batch_size(8, mesh) == 8  # one host
    with pytest.raises(ValueError, match="training.batch_size 6 is not divisible by the 4 devices"):
        data_parallel.per_host_batch_size(6, mesh)
    with pytest.raises(ValueError, match="sampling.batch_size 0"):
        data_parallel.per_host_batch_size(0, mesh, "sampling.batch_size")


def test_host_batches_are_sharded_over_the_data_axis_and_prefetched_in_order():
    mesh = data_parallel.data_mesh()
    host_batches = [np.full((8, 2), i, np.float32) for i in range(5)]
    out = list(data_parallel.prefetch_to_mesh(iter(host_batches), mesh, size=2))
    assert len(out) == 5
    for i, batch in enumerate(out):
        np.testing.assert_array_equal(batch, host_batches[i])
        assert batch.sharding.spec == data_parallel.batch_sharding(mesh).spec
        assert {shard.data.shape for shard in batch.addressable_shards} == {(2, 2)}


def test_replicate_puts_a_full_copy_on_every_device():
    mesh = data_parallel.data_mesh()
    tree = data_parallel.replicate({"w": np.arange(6.0)}, mesh)
    assert len(tree["w"].addressable_shards) == jax.device_count()
    for shard in tree["w"].addressable_shards:
        np.testing.assert_array_equal(shard.data, np.arange(6.0))
