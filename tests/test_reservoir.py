"""Reservoir sampling: a uniform sample of a stream, whatever its order and batching."""
import numpy as np

from ncsn_jax.data.reservoir import Reservoir


def test_kid_reference_is_a_uniform_sample_of_a_sorted_stream():
    # Rows 0..9999 arrive in order, in batches: a uniform sample of 500 has mean ≈ 4999.5 (sd ≈ 126),
    # where the first 500 rows would have mean 249.5.
    reservoir = Reservoir(500, np.random.default_rng(0))
    for start in range(0, 10_000, 100):
        reservoir.update(np.arange(start, start + 100, dtype=np.float32)[:, None])
    sample = reservoir.sample()[:, 0]
    assert sample.shape == (500,) and len(np.unique(sample)) == 500
    assert abs(sample.mean() - 4999.5) < 4 * 2887 / np.sqrt(500)


def test_the_sample_does_not_depend_on_the_batching():
    rows = np.arange(3_000, dtype=np.float32)[:, None]
    samples = []
    for batch in (1, 7, 3_000):
        reservoir = Reservoir(100, np.random.default_rng(3))
        for start in range(0, len(rows), batch):
            reservoir.update(rows[start:start + batch])
        samples.append(reservoir.sample())
    np.testing.assert_array_equal(samples[0], samples[1])
    np.testing.assert_array_equal(samples[0], samples[2])


def test_fewer_rows_than_the_size_are_all_kept_in_order():
    reservoir = Reservoir(10, np.random.default_rng(0))
    reservoir.update(np.arange(4, dtype=np.float32)[:, None])
    np.testing.assert_array_equal(reservoir.sample()[:, 0], [0, 1, 2, 3])
    assert reservoir.seen == 4
