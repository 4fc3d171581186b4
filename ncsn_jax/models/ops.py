"""The network's two costly operations, with derivatives that XLA:CPU computes several times faster.

XLA:CPU lowers the weight gradient of a 3×3 convolution to a generic convolution that runs at about a
third of the speed of a matrix product, and the derivative of a max pool to `select_and_scatter`,
which is slower still. On CPU the derivatives here are written instead as

- the kernel gradient: one matrix product per kernel tap, ∂L/∂W[i, j] = X_ijᵀ·G with X_ij the input
  shifted by tap (i, j) and flattened to (B·H·W, C_in), G the output gradient (B·H·W, C_out);
- the max-pool gradient: each output's gradient goes to the first position of its window that holds
  the maximum (what `select_and_scatter` does), written as elementwise compares and shifted adds that
  XLA fuses.

`jax.lax.platform_dependent` picks these only when the program is compiled for CPU; GPUs and TPUs
keep XLA's own derivatives. The values are those of the plain operations (the forward passes are the
same calls), and the gradients equal `jax.grad` of the plain operations to float rounding
(tests/test_ops.py).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
# Below this many input or output channels the tap products are too thin to beat XLA's own kernel
# gradient (measured on 2 cores: 8 channels 5.0 ms against 2.7; 16 channels 6.2 against 8.7 at 28×28).
# A 1×1 convolution's kernel gradient is already one matrix product.
_MIN_TAP_FEATURES = 16


def _plain_conv2d(x: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
    size = kernel.shape[0]
    pad = dilation * (size - 1) // 2
    return lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
        rhs_dilation=(dilation, dilation), dimension_numbers=_DIMENSIONS,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x: jax.Array, kernel: jax.Array, dilation: int = 1) -> jax.Array:
    """Stride-1 convolution with PyTorch's 'same' padding (dilation·(k − 1)/2 on each side).

    Args:
      x: (B, H, W, C_in) input, NHWC.
      kernel: (k, k, C_in, C_out) kernel, HWIO, k odd.
      dilation: spacing of the kernel taps (static).

    Returns:
      (B, H, W, C_out), in the dtype of the operands.
    """
    return _plain_conv2d(x, kernel, dilation)


def _conv2d_fwd(x, kernel, dilation):
    return _plain_conv2d(x, kernel, dilation), (x, kernel)


def _kernel_grad_by_taps(x: jax.Array, grad_out: jax.Array, size: int, dilation: int) -> jax.Array:
    """∂L/∂W of a 'same' convolution as `size`² matrix products (see the module docstring)."""
    _, height, width, in_features = x.shape
    out_features = grad_out.shape[-1]
    pad = dilation * (size - 1) // 2
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    grad_rows = grad_out.reshape(-1, out_features)
    taps = []
    for i in range(size):
        for j in range(size):
            shifted = lax.slice(
                padded, (0, i * dilation, j * dilation, 0),
                (padded.shape[0], i * dilation + height, j * dilation + width, in_features),
            )
            taps.append(shifted.reshape(-1, in_features).T @ grad_rows)
    return jnp.stack(taps).reshape(size, size, in_features, out_features)


def _conv2d_bwd(dilation, residuals, grad_out):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x_: _plain_conv2d(x_, kernel, dilation), x)
    (grad_x,) = input_vjp(grad_out)

    def xla_kernel_grad(x_, g_):
        _, kernel_vjp = jax.vjp(lambda k: _plain_conv2d(x_, k, dilation), kernel)
        return kernel_vjp(g_)[0]

    def cpu_kernel_grad(x_, g_):
        return _kernel_grad_by_taps(x_, g_, kernel.shape[0], dilation).astype(kernel.dtype)

    size, _, in_features, out_features = kernel.shape
    if size == 1 or min(in_features, out_features) < _MIN_TAP_FEATURES:
        grad_kernel = xla_kernel_grad(x, grad_out)
    else:
        grad_kernel = lax.platform_dependent(x, grad_out, cpu=cpu_kernel_grad, default=xla_kernel_grad)
    return grad_x, grad_kernel


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _shift(x: jax.Array, offset: int, axis: int, fill: float) -> jax.Array:
    """x moved by `offset` along `axis` (y[p] = x[p + offset]), the vacated places set to `fill`."""
    size = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (max(-offset, 0), max(offset, 0))
    padded = jnp.pad(x, pad, constant_values=fill)
    return lax.slice_in_dim(padded, max(offset, 0), max(offset, 0) + size, axis=axis)


def _plain_max_pool_1d(x: jax.Array, window: int, axis: int) -> jax.Array:
    dims = [1] * x.ndim
    dims[axis] = window
    half = window // 2
    padding = [(0, 0)] * x.ndim
    padding[axis] = (half, half)
    return lax.reduce_window(x, -jnp.inf, lax.max, tuple(dims), (1,) * x.ndim, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool_1d(x: jax.Array, window: int, axis: int) -> jax.Array:
    """Stride-1 max over `window` (odd) neighbours along `axis`, padded with −inf (output size = input's).

    Args:
      x: any float array.
      window: window length, odd (static).
      axis: the pooled axis (static).
    """
    return _plain_max_pool_1d(x, window, axis)


def _max_pool_1d_fwd(x, window, axis):
    y = _plain_max_pool_1d(x, window, axis)
    return y, (x, y)


def _max_pool_grad_by_shifts(x: jax.Array, y: jax.Array, grad_out: jax.Array, window: int,
                             axis: int) -> jax.Array:
    """Routes each output's gradient to the first window position holding the maximum."""
    half = window // 2
    grad_x = jnp.zeros_like(grad_out)
    unassigned = jnp.ones(y.shape, bool)
    for k in range(window):  # window positions in order, so the first maximum wins
        offset = k - half
        is_max = unassigned & (_shift(x, offset, axis, -jnp.inf) == y)
        unassigned = unassigned & ~is_max
        routed = jnp.where(is_max, grad_out, 0.0)
        grad_x = grad_x + _shift(routed, -offset, axis, 0.0)
    return grad_x


def _max_pool_1d_bwd(window, axis, residuals, grad_out):
    x, y = residuals

    def xla_grad(x_, g_):
        _, vjp = jax.vjp(lambda v: _plain_max_pool_1d(v, window, axis), x_)
        return vjp(g_)[0]

    def cpu_grad(x_, g_):
        return _max_pool_grad_by_shifts(x_, y, g_, window, axis)

    return (lax.platform_dependent(x, grad_out, cpu=cpu_grad, default=xla_grad),)


max_pool_1d.defvjp(_max_pool_1d_fwd, _max_pool_1d_bwd)
