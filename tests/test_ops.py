"""The CPU derivative of ncsn_jax.models.ops.max_pool_1d equals jax.grad of the plain pool, and is the one
compiled on CPU."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncsn_jax.models import ops


def plain_max_pool_1d(x, window, axis):
    """The reference: flax's 'SAME' max pool (a reduce_window), differentiated by JAX."""
    shape = [1, 1]
    shape[axis - 1] = window
    return nn.max_pool(x, tuple(shape), strides=(1, 1), padding="SAME")


@pytest.mark.parametrize("axis", [1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_gradient_equals_jax_grad_of_reduce_window(axis, ties):
    x = jax.random.normal(jax.random.key(1), (2, 9, 11, 3))
    if ties:  # coarse values: windows with several maxima, where the first one must take the gradient
        x = jnp.round(x)
    cotangent = jax.random.normal(jax.random.key(2), x.shape)
    np.testing.assert_array_equal(ops.max_pool_1d(x, 5, axis), plain_max_pool_1d(x, 5, axis))

    got = jax.jit(jax.grad(lambda v: jnp.vdot(ops.max_pool_1d(v, 5, axis), cotangent)))(x)
    want = jax.jit(jax.grad(lambda v: jnp.vdot(plain_max_pool_1d(v, 5, axis), cotangent)))(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5)
    if ties:
        assert float(jnp.max(jnp.abs(got))) > float(jnp.max(jnp.abs(cotangent)))  # gradients did pile up


def test_max_pool_gradient_has_no_scatter_on_cpu():
    x = jax.random.normal(jax.random.key(1), (2, 9, 11, 3))
    grad = jax.jit(jax.grad(lambda v, c_: jnp.vdot(ops.max_pool_1d(v, 5, 2), c_)))
    hlo = grad.lower(x, x).compile().as_text()
    assert "reduce-window(" in hlo  # the forward pool is there ...
    # ... and its derivative is not XLA's select-and-scatter (which XLA:CPU expands into a scatter).
    assert " scatter(" not in hlo
