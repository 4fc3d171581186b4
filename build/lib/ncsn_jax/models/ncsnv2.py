"""The three NCSNv2 score networks: NCSNv2 (32–64 px), NCSNv2Deeper (96–128 px), NCSNv2Deepest (256 px).

Each is a RefineNet: a stack of residual stages going down in resolution, then one RefineBlock per stage
coming back up, each fusing that stage's features with the refined features from the stage below.
The networks differ only in their stage tables, so one module implements all three.

Technique 3 (noise conditioning by output scaling): the network f_θ is unconditional and
s_θ(x, σ) = f_θ(x)/σ.
"""
from __future__ import annotations

from typing import Any, ClassVar, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ncsn_jax.models.layers import Conv2d, InstanceNormPlus, RefineBlock, ResidualBlock


class Stage(NamedTuple):
    """One residual stage (two blocks) and the refine block that brings it back up.

    Attributes:
      name: official name of the residual stage (`res1`, ..., `res31`).
      width: output channels, in multiples of ngf.
      downsample: the first block has the official `resample='down'` flag (it halves the resolution
        only when `dilation` is 1).
      dilation: dilation of both blocks' 3×3 convolutions.
      refine_name: official name of the matching refine block.
      refine_width: that refine block's output channels, in multiples of ngf.
    """

    name: str
    width: int
    downsample: bool
    dilation: int
    refine_name: str
    refine_width: int

    @property
    def halves_resolution(self) -> bool:
        """Whether the stage halves the resolution (a "down" block without dilation)."""
        return self.downsample and self.dilation == 1


class RefineNetScore(nn.Module):
    """NCSNv2-family score network; subclasses set `stages` (listed from the input resolution down).

    Attributes:
      ngf: base number of channels (128 in every paper config).
      channels: image channels C.
      dtype: compute dtype (jnp.float32 or jnp.bfloat16); parameters stay float32.
    """

    ngf: int = 128
    channels: int = 3
    dtype: Any = jnp.float32

    stages: ClassVar[Sequence[Stage]] = ()

    @nn.compact
    def __call__(self, x: jax.Array, sigma: jax.Array) -> jax.Array:
        """Score s_θ(x, σ).

        Args:
          x: (B, H, W, C) images with pixel values in [0, 1] (plus noise).
          sigma: (B,) noise level of each image.

        Returns:
          (B, H, W, C) float32 score f_θ(x)/σ.
        """
        if x.ndim != 4 or x.shape[-1] != self.channels:
            raise ValueError(f"expected NHWC images with {self.channels} channels, got shape {x.shape}")
        h = Conv2d(self.ngf, dtype=self.dtype, name="begin_conv")(2.0 * x - 1.0)

        features = []
        for stage in self.stages:
            width = stage.width * self.ngf
            for block, downsample in enumerate((stage.downsample, False)):
                h = ResidualBlock(
                    width, downsample=downsample, dilation=stage.dilation, dtype=self.dtype,
                    name=f"{stage.name}_{block}",
                )(h)
            features.append(h)

        refined = None
        for depth, (stage, h) in enumerate(reversed(list(zip(self.stages, features)))):
            inputs = [h] if refined is None else [h, refined]
            is_last = depth == len(self.stages) - 1
            refined = RefineBlock(
                stage.refine_width * self.ngf, end=is_last, dtype=self.dtype, name=stage.refine_name
            )(inputs)

        h = nn.elu(InstanceNormPlus(dtype=self.dtype, name="normalizer")(refined))
        h = Conv2d(self.channels, dtype=self.dtype, name="end_conv")(h)
        sigma = jnp.asarray(sigma, jnp.float32).reshape(-1, 1, 1, 1)
        return h.astype(jnp.float32) / sigma


class NCSNv2(RefineNetScore):
    """NCSNv2 for 32×32 and 64×64 images (CIFAR-10, CelebA): one halving, then two dilated stages."""

    stages: ClassVar[Sequence[Stage]] = (
        Stage("res1", 1, False, 1, "refine4", 1),
        Stage("res2", 2, True, 1, "refine3", 1),
        Stage("res3", 2, True, 2, "refine2", 2),
        Stage("res4", 2, True, 4, "refine1", 2),
    )


class NCSNv2Deeper(RefineNetScore):
    """NCSNv2Deeper for 96×96 and 128×128 images (LSUN): two halvings, then two dilated 4·ngf stages."""

    stages: ClassVar[Sequence[Stage]] = (
        Stage("res1", 1, False, 1, "refine5", 1),
        Stage("res2", 2, True, 1, "refine4", 1),
        Stage("res3", 2, True, 1, "refine3", 2),
        Stage("res4", 4, True, 2, "refine2", 2),
        Stage("res5", 4, True, 4, "refine1", 4),
    )


class NCSNv2Deepest(RefineNetScore):
    """NCSNv2Deepest for 256×256 images (FFHQ): NCSNv2Deeper with one more halving stage (res31)."""

    stages: ClassVar[Sequence[Stage]] = (
        Stage("res1", 1, False, 1, "refine5", 1),
        Stage("res2", 2, True, 1, "refine4", 1),
        Stage("res3", 2, True, 1, "refine3", 2),
        Stage("res31", 2, True, 1, "refine31", 2),
        Stage("res4", 4, True, 2, "refine2", 2),
        Stage("res5", 4, True, 4, "refine1", 4),
    )
