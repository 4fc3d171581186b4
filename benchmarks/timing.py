"""What the benchmarks share: a training state and batch on the device mesh, and a timer."""
import statistics
import time

import jax

from ncsn_jax import train_state
from ncsn_jax.runtime import data_parallel


def training_inputs(config, mesh, batch_size):
    """A replicated fresh train state, a U[0, 1) batch of `batch_size` sharded over the mesh, and a key."""
    size, channels = config.data.image_size, config.data.channels
    state = train_state.init_train_state(config, jax.random.key(0), mesh)
    batch = jax.device_put(jax.random.uniform(jax.random.key(1), (batch_size, size, size, channels)),
                           data_parallel.batch_sharding(mesh))
    return state, batch, jax.random.key(2)


def compile_seconds(jitted, *args):
    """(the compiled executable, seconds it took to compile) for `jitted` at `args`."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def median_seconds(fn, repeats, warmup=1):
    """Median wall time of `repeats` calls of `fn` after `warmup` untimed ones (the first call after
    compilation also pays for allocations)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step_seconds(compiled_step, state, batch, rng, repeats, warmup=1):
    """Median seconds of the compiled training step (see `median_seconds`), and the final state.

    The step donates its state, so each call is given the state the previous one returned.
    """
    def step():
        nonlocal state
        state, metrics = compiled_step(state, batch, rng)
        jax.block_until_ready(metrics)

    return median_seconds(step, repeats, warmup), state
