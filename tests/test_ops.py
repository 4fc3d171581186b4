"""The CPU derivatives of ncsn_jax.models.ops equal jax.grad of the plain operations, and are the ones
compiled on CPU."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ncsn_jax.models import ops


def plain_conv2d(x, kernel, dilation):
    """The reference: XLA's convolution, differentiated by JAX."""
    pad = dilation * (kernel.shape[0] - 1) // 2
    return lax.conv_general_dilated(x, kernel, (1, 1), ((pad, pad), (pad, pad)), rhs_dilation=(dilation, dilation),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def plain_max_pool_1d(x, window, axis):
    """The reference: flax's 'SAME' max pool (a reduce_window), differentiated by JAX."""
    import flax.linen as nn

    shape = [1, 1]
    shape[axis - 1] = window
    return nn.max_pool(x, tuple(shape), strides=(1, 1), padding="SAME")


def random_inputs(shape_x, shape_k, seed=0):
    kx, kk, kg = jax.random.split(jax.random.key(seed), 3)
    out_shape = shape_x[:-1] + shape_k[-1:]
    return (jax.random.normal(kx, shape_x), 0.1 * jax.random.normal(kk, shape_k),
            jax.random.normal(kg, out_shape))


@pytest.mark.parametrize("size,in_features,out_features,dilation", [
    (3, 16, 24, 1),  # the tap products (16 channels and more)
    (3, 32, 16, 2),
    (3, 16, 16, 4),
    (3, 8, 16, 1),  # too few channels: XLA's own kernel gradient
    (1, 16, 32, 1),  # 1×1: XLA's own
])
def test_conv2d_gradients_equal_jax_grad_of_plain_conv(size, in_features, out_features, dilation):
    x, kernel, cotangent = random_inputs((2, 10, 12, in_features), (size, size, in_features, out_features))
    np.testing.assert_array_equal(ops.conv2d(x, kernel, dilation), plain_conv2d(x, kernel, dilation))

    def loss(conv):
        return lambda x_, k_: jnp.vdot(conv(x_, k_, dilation), cotangent)

    got = jax.jit(jax.grad(loss(ops.conv2d), argnums=(0, 1)))(x, kernel)
    want = jax.jit(jax.grad(loss(plain_conv2d), argnums=(0, 1)))(x, kernel)
    for g, w in zip(got, want):
        scale = float(jnp.max(jnp.abs(w)))
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=2e-6 * scale)


def test_conv2d_kernel_gradient_is_matrix_products_on_cpu():
    # If the platform dispatch silently fell back, the compiled gradient would hold two convolutions.
    x, kernel, cotangent = random_inputs((2, 8, 8, 16), (3, 3, 16, 16))
    grad = jax.jit(jax.grad(lambda k, x_, c_: jnp.vdot(ops.conv2d(x_, k, 1), c_)))
    hlo = grad.lower(kernel, x, cotangent).compile().as_text()
    assert hlo.count(" dot(") == 9
    assert "convolution(" not in hlo


def test_conv2d_gradient_in_bfloat16_matches_float32_reference():
    x, kernel, cotangent = random_inputs((2, 8, 8, 16), (3, 3, 16, 16))
    grad_bf16 = jax.grad(lambda k: jnp.vdot(ops.conv2d(x.astype(jnp.bfloat16), k, 1).astype(jnp.float32),
                                            cotangent))(kernel.astype(jnp.bfloat16))
    assert grad_bf16.dtype == jnp.bfloat16
    want = jax.grad(lambda k: jnp.vdot(plain_conv2d(x, k, 1), cotangent))(kernel)
    np.testing.assert_allclose(np.asarray(grad_bf16, np.float32), np.asarray(want), rtol=0,
                               atol=0.03 * float(jnp.max(jnp.abs(want))))


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
