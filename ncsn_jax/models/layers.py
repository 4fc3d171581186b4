"""Building blocks of the NCSNv2 RefineNets, layer for layer as the official PyTorch code, in NHWC.

Every module that owns parameters carries the official module's name, so that an official state_dict
key such as `refine2.adapt_convs.1.2_1_conv.weight` maps to the Flax path
`refine2/adapt_convs_1/2_1_conv/kernel` by renaming alone (see `ncsn_jax.official.convert`).

All modules take a `dtype` for the computation (float32 or bfloat16); parameters are always float32.
Normalisation statistics are computed in float32 whatever the compute dtype.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax.models import ops

Dtype = Any


def _torch_uniform_init(fan_in: int):
    """PyTorch's default Conv2d initialisation, U(±1/√fan_in), for both weight and bias.

    (kaiming_uniform with a=√5 reduces to this bound; Flax's defaults differ, and the official
    models were trained from this one.)
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Conv2d(nn.Module):
    """A stride-1 convolution with PyTorch's padding (= dilation · (k−1)/2) and initialisation.

    Kernel layout HWIO; input and output NHWC.
    """

    features: int
    kernel_size: int = 3
    dilation: int = 1
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        fan_in = in_features * self.kernel_size**2
        init = _torch_uniform_init(fan_in)
        kernel = self.param(
            "kernel", init, (self.kernel_size, self.kernel_size, in_features, self.features)
        )
        pad = self.dilation * (self.kernel_size - 1) // 2
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            window_strides=(1, 1),
            padding=((pad, pad), (pad, pad)),
            rhs_dilation=(self.dilation, self.dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.use_bias:
            bias = self.param("bias", init, (self.features,))
            y = y + bias.astype(self.dtype)
        return y


def mean_pool_2x2(x: jax.Array) -> jax.Array:
    """Average of each non-overlapping 2×2 window of an NHWC tensor (even height and width)."""
    b, h, w, c = x.shape
    if h % 2 or w % 2:
        raise ValueError(
            f"mean pooling needs an even height and width, got {h}×{w}: use an image size divisible "
            "by the network's total downsampling factor"
        )
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class ConvMeanPool(nn.Module):
    """Convolution followed by 2×2 mean pooling; the conv is a child named `conv` as in the official code."""

    features: int
    kernel_size: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = Conv2d(self.features, self.kernel_size, dtype=self.dtype, name="conv")(x)
        return mean_pool_2x2(y)


class InstanceNormPlus(nn.Module):
    """InstanceNorm++ (NCSNv2 paper, appendix): instance norm that re-injects the channel means.

    For x of shape (B, H, W, C): μ[b, c] is the spatial mean; the means are standardised across
    channels with the UNBIASED variance (divides by C − 1, as torch.var in the official code) and added
    back with a learned scale α. No running statistics.
    """

    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        alpha = self.param("alpha", lambda k, s: 1.0 + 0.02 * jax.random.normal(k, s), (channels,))
        gamma = self.param("gamma", lambda k, s: 1.0 + 0.02 * jax.random.normal(k, s), (channels,))
        beta = self.param("beta", nn.initializers.zeros, (channels,))

        x32 = x.astype(jnp.float32)
        means = jnp.mean(x32, axis=(1, 2))  # (B, C)
        channel_mean = jnp.mean(means, axis=-1, keepdims=True)
        channel_var = jnp.var(means, axis=-1, keepdims=True, ddof=1)
        standardised_means = (means - channel_mean) / jnp.sqrt(channel_var + self.eps)

        spatial_var = jnp.var(x32, axis=(1, 2), keepdims=True)  # biased, as InstanceNorm2d
        h = (x32 - means[:, None, None, :]) / jnp.sqrt(spatial_var + self.eps)
        h = h + standardised_means[:, None, None, :] * alpha
        return (gamma * h + beta).astype(self.dtype)


class ResidualBlock(nn.Module):
    """Pre-activation residual block: conv2(elu(norm2(conv1(elu(norm1(x)))))) + shortcut(x).

    With `downsample` and no dilation it halves the resolution (conv then 2×2 mean pool, on the main path
    and on a 1×1 shortcut). With `downsample` AND a dilation it does NOT change the resolution: the
    official code's "down" blocks with dilation only widen the receptive field, with a dilated 3×3
    shortcut.
    """

    features: int
    downsample: bool = False
    dilation: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        d = self.dilation
        if self.downsample and d == 1:
            conv1 = Conv2d(in_features, dtype=self.dtype, name="conv1")
            conv2 = ConvMeanPool(self.features, dtype=self.dtype, name="conv2")
            shortcut = ConvMeanPool(self.features, kernel_size=1, dtype=self.dtype, name="shortcut")
        elif self.downsample:
            conv1 = Conv2d(in_features, dilation=d, dtype=self.dtype, name="conv1")
            conv2 = Conv2d(self.features, dilation=d, dtype=self.dtype, name="conv2")
            shortcut = Conv2d(self.features, dilation=d, dtype=self.dtype, name="shortcut")
        else:
            conv1 = Conv2d(self.features, dilation=d, dtype=self.dtype, name="conv1")
            conv2 = Conv2d(self.features, dilation=d, dtype=self.dtype, name="conv2")
            # Unused by the three networks (their non-resampling blocks keep the width), kept so the
            # block is complete: the official code uses a 1×1 (or dilated 3×3) shortcut here.
            shortcut = Conv2d(
                self.features, kernel_size=1 if d == 1 else 3, dilation=d, dtype=self.dtype,
                name="shortcut",
            )

        h = nn.elu(InstanceNormPlus(dtype=self.dtype, name="normalize1")(x))
        h = conv1(h)
        h = nn.elu(InstanceNormPlus(dtype=self.dtype, name="normalize2")(h))
        h = conv2(h)
        if in_features == self.features and not self.downsample:
            return x + h
        return shortcut(x) + h


class RCUBlock(nn.Module):
    """Residual conv units: `n_blocks` times x += conv(elu(conv(elu(x)))), bias-free 3×3 convs."""

    n_blocks: int
    n_stages: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        for i in range(1, self.n_blocks + 1):
            residual = x
            for j in range(1, self.n_stages + 1):
                x = Conv2d(features, use_bias=False, dtype=self.dtype, name=f"{i}_{j}_conv")(nn.elu(x))
            x = x + residual
        return x


def max_pool_5x5(x: jax.Array) -> jax.Array:
    """5×5 stride-1 max pool of an NHWC tensor, padded with −inf (PyTorch's MaxPool2d(5, 1, padding=2)).

    Done as a 1×5 pool then a 5×1 pool (the maximum is separable): the same values, and on CPU over ten
    times faster than XLA's 2-D window reduction. `ops.max_pool_1d` also has a faster derivative on CPU.
    """
    return ops.max_pool_1d(ops.max_pool_1d(x, 5, axis=2), 5, axis=1)


class CRPBlock(nn.Module):
    """Chained residual pooling: a chain of (5×5 stride-1 max pool, bias-free 3×3 conv), each summed in."""

    n_stages: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        x = nn.elu(x)
        path = x
        for i in range(self.n_stages):
            path = max_pool_5x5(path)
            path = Conv2d(features, use_bias=False, dtype=self.dtype, name=f"convs_{i}")(path)
            x = x + path
        return x


def _align_corners_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) linear-interpolation weights with align_corners=True.

    Output pixel i samples the input at i·(in−1)/(out−1), so the corner pixels of input and output
    coincide (PyTorch's F.interpolate(..., align_corners=True), which the official MSF uses).
    """
    weights = np.zeros((out_size, in_size), np.float32)
    if out_size == 1 or in_size == 1:
        weights[:, 0] = 1.0
        return weights
    positions = np.arange(out_size) * ((in_size - 1) / (out_size - 1))
    lower = np.clip(np.floor(positions).astype(int), 0, in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    frac = (positions - lower).astype(np.float32)
    np.add.at(weights, (np.arange(out_size), lower), 1.0 - frac)
    np.add.at(weights, (np.arange(out_size), upper), frac)
    return weights


def resize_bilinear_align_corners(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """Bilinear resize of an NHWC tensor to `size` = (H', W') with align_corners=True.

    Written as two small matrix products (separable interpolation), which map onto the matrix units of
    TPUs and GPUs better than gathers.
    """
    out_h, out_w = size
    _, in_h, in_w, _ = x.shape
    if (in_h, in_w) == (out_h, out_w):
        return x
    rows = jnp.asarray(_align_corners_matrix(in_h, out_h), x.dtype)
    cols = jnp.asarray(_align_corners_matrix(in_w, out_w), x.dtype)
    return jnp.einsum("ph,bhwc,qw->bpqc", rows, x, cols, precision=jax.lax.Precision.HIGHEST)


class MSFBlock(nn.Module):
    """Multi-resolution fusion: sum of 3×3 convs (with bias) of each input, resized to `size`."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, xs: Sequence[jax.Array], size: Sequence[int]) -> jax.Array:
        total = 0.0
        for i, x in enumerate(xs):
            h = Conv2d(self.features, dtype=self.dtype, name=f"convs_{i}")(x)
            total = total + resize_bilinear_align_corners(h, size)
        return total


class RefineBlock(nn.Module):
    """RefineNet block: RCU per input, fusion (when there are several inputs), CRP, output RCU.

    The output RCU has 3 blocks in the last (`end`) refine block and 1 elsewhere. No normalisation.
    """

    features: int
    end: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, xs: Sequence[jax.Array]) -> jax.Array:
        size = xs[0].shape[1:3]
        hs = [
            RCUBlock(n_blocks=2, dtype=self.dtype, name=f"adapt_convs_{i}")(x)
            for i, x in enumerate(xs)
        ]
        h = MSFBlock(self.features, dtype=self.dtype, name="msf")(hs, size) if len(hs) > 1 else hs[0]
        h = CRPBlock(dtype=self.dtype, name="crp")(h)
        return RCUBlock(n_blocks=3 if self.end else 1, dtype=self.dtype, name="output_convs")(h)
