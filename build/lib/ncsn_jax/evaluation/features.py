"""The feature extractors of sample quality: the FID Inception-v3, or the project's digit classifier.

`feature_extractor(config)` picks one by `config.eval.features` ("auto": the digit classifier for MNIST,
the FID Inception otherwise). An extractor maps images (N, H, W, C) in [0, 1] to features (N, D) for
the Fréchet distance and KID, and logits (N, K) for the Inception Score.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import ml_collections
import numpy as np

from ncsn_jax.evaluation import digits, inception

FeatureFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """A named function of images (N, H, W, C) in [0, 1] → (features (N, D), logits (N, K))."""

    name: str
    fn: FeatureFn

    def feature_dim(self, image_shape: tuple[int, int, int]) -> int:
        """D, found by extracting the features of one blank image of `image_shape` (H, W, C)."""
        return self.fn(np.zeros((1, *image_shape), np.float32))[0].shape[-1]


def feature_extractor(config: ml_collections.ConfigDict) -> FeatureExtractor:
    """The feature extractor that `config.eval.features` names ("auto": digits for MNIST, else Inception).

    The names, and that 'digits' goes with 28×28 grey images, are checked by `config_checks`.

    Raises:
      MissingWeightsError: the Inception weights are neither at `eval.inception_path` nor downloadable.
    """
    if resolved_features(config) == "digits":
        return FeatureExtractor("digit_classifier", digits.make_digit_feature_fn(digits.load_digit_classifier()))
    params = inception.load_inception_params(config.eval.inception_path or None)
    return FeatureExtractor("inception_pool3", inception.make_feature_fn(params, config.eval.batch_size))


def resolved_features(config: ml_collections.ConfigDict) -> str:
    """`config.eval.features` with "auto" resolved: "digits" for MNIST, "inception" otherwise."""
    kind = config.eval.features
    if kind == "auto":
        return "digits" if config.data.dataset == "mnist" else "inception"
    return kind
