"""The CRP block's max pool, with a derivative that XLA:CPU computes faster than its own.

XLA:CPU lowers the derivative of a max pool (`select_and_scatter`) to a scatter. Here each output's
gradient goes to the first position of its window that holds the maximum, as `select_and_scatter` does,
written as elementwise compares and shifted adds that XLA fuses: 1.1 to 3 times faster for the pools of
the NCSNv2 networks on 2 cores (a 5×5 pool's forward and backward at 16×16×256, batch 8: 13–24 ms
against 38). `jax.lax.platform_dependent` picks it only when the program is compiled for CPU; GPUs and
TPUs keep XLA's own derivative. The values are those of the plain pool, and the gradient equals
`jax.grad` of the plain pool, ties included (tests/test_ops.py).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


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
