"""The FID Inception-v3 (TF's "2015-12-05" graph) as a Flax module, and its published weights.

FID, Inception Score and KID are comparable with published numbers only when computed with this exact
network. pytorch-fid ports it to PyTorch (weights `pt_inception-2015-12-05-6726825d.pth`) on top of
torchvision's Inception-v3; this module reproduces that port, whose differences from torchvision's model
are:
  * 1008 logits: the TF graph's softmax layer has 1008 classes;
  * the 3×3 average pools in the A, C and E blocks (Mixed_5b–d, 6b–e, 7b) leave the zero padding out of
    the mean, as TF's average pool does;
  * the pool branch of the last E block (Mixed_7c) takes a 3×3 max pool, not an average pool.
As in torchvision, each convolution has no bias and is followed by BatchNorm (ε = 0.001) and ReLU.
As pytorch-fid's `InceptionV3`, the input is first resized to 299×299 bilinearly (F.interpolate with
align_corners=False and no antialiasing) and then mapped from [0, 1] to [−1, 1] by 2x − 1.

Module and variable names follow torchvision's (`Mixed_5b/branch1x1/conv/kernel`, batch statistics
`Mixed_5b/branch1x1/bn/mean`), so `from_pytorch_fid` is a renaming plus layout transposes.
"""
from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import trees
from ncsn_jax.errors import MissingWeightsError
from ncsn_jax.official.torch_files import load_torch_file

Variables = dict[str, Any]

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
FID_WEIGHTS_FILE = FID_WEIGHTS_URL.rsplit("/", 1)[-1]
# torch.hub's convention: the hex digits after the last '-' of the file name begin the file's SHA-256.
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "ncsn_jax")

INPUT_SIZE = 299
NUM_LOGITS = 1008
_BN_EPSILON = 1e-3
# Full float32 convolutions even on GPUs, whose default (TF32) would move the features, and so FID, away
# from the float32 reference.
_PRECISION = jax.lax.Precision.HIGHEST


def _interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 matrix of 1-D linear interpolation as torch's, align_corners=False.

    Computed in float32 like torch's CPU kernel: source coordinate (i + 0.5)·in/out − 0.5, clamped at 0,
    blended between floor and the next pixel (the last pixel repeats at the far edge).
    """
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5),
                     np.float32(0))
    lower = src.astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    weight_upper = src - lower.astype(np.float32)
    matrix = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lower), np.float32(1) - weight_upper)
    np.add.at(matrix, (rows, upper), weight_upper)
    return matrix


def resize_bilinear(images: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize as `torch.nn.functional.interpolate(mode='bilinear', align_corners=False)`.

    Unlike `jax.image.resize`, it does not antialias when shrinking, as torch does not by default.

    Args:
      images: (N, H, W, C) float.
      height, width: output size in pixels.

    Returns:
      (N, height, width, C) float32.
    """
    rows = _interpolation_matrix(images.shape[1], height)
    cols = _interpolation_matrix(images.shape[2], width)
    images = jnp.einsum("oh,nhwc->nowc", rows, images.astype(jnp.float32), precision=_PRECISION)
    return jnp.einsum("pw,nowc->nopc", cols, images, precision=_PRECISION)


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value


class _ConvBN(nn.Module):
    """torchvision's BasicConv2d: convolution without bias, BatchNorm with stored statistics, ReLU."""

    features: int
    kernel_size: int | tuple[int, int]
    strides: int = 1
    padding: int | tuple[int, int] = 0  # symmetric, per (H, W), as torch's Conv2d padding

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(self.features, _pair(self.kernel_size), _pair(self.strides),
                    padding=[(p, p) for p in _pair(self.padding)], use_bias=False, precision=_PRECISION,
                    name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=_BN_EPSILON, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_stride_2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), (2, 2))


class _InceptionA(nn.Module):
    """Mixed_5b–d: 1×1, 5×5 and double 3×3 towers and an average-pool branch; 224 + pool_features out."""

    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch1x1 = _ConvBN(64, 1, name="branch1x1")(x)
        branch5x5 = _ConvBN(48, 1, name="branch5x5_1")(x)
        branch5x5 = _ConvBN(64, 5, padding=2, name="branch5x5_2")(branch5x5)
        branch3x3dbl = _ConvBN(64, 1, name="branch3x3dbl_1")(x)
        branch3x3dbl = _ConvBN(96, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = _ConvBN(96, 3, padding=1, name="branch3x3dbl_3")(branch3x3dbl)
        branch_pool = _ConvBN(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class _InceptionB(nn.Module):
    """Mixed_6a: halves the grid (35 → 17) with strided 3×3 towers and a max pool."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch3x3 = _ConvBN(384, 3, strides=2, name="branch3x3")(x)
        branch3x3dbl = _ConvBN(64, 1, name="branch3x3dbl_1")(x)
        branch3x3dbl = _ConvBN(96, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = _ConvBN(96, 3, strides=2, name="branch3x3dbl_3")(branch3x3dbl)
        return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3_stride_2(x)], axis=-1)


class _InceptionC(nn.Module):
    """Mixed_6b–e: factorised 7×7 towers (1×7 and 7×1) of width channels_7x7; 768 channels out."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        branch1x1 = _ConvBN(192, 1, name="branch1x1")(x)
        branch7x7 = _ConvBN(c7, 1, name="branch7x7_1")(x)
        branch7x7 = _ConvBN(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(branch7x7)
        branch7x7 = _ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7_3")(branch7x7)
        branch7x7dbl = _ConvBN(c7, 1, name="branch7x7dbl_1")(x)
        branch7x7dbl = _ConvBN(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(branch7x7dbl)
        branch7x7dbl = _ConvBN(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(branch7x7dbl)
        branch7x7dbl = _ConvBN(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(branch7x7dbl)
        branch7x7dbl = _ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(branch7x7dbl)
        branch_pool = _ConvBN(192, 1, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class _InceptionD(nn.Module):
    """Mixed_7a: halves the grid (17 → 8) with strided towers and a max pool; 1280 channels out."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch3x3 = _ConvBN(192, 1, name="branch3x3_1")(x)
        branch3x3 = _ConvBN(320, 3, strides=2, name="branch3x3_2")(branch3x3)
        branch7x7x3 = _ConvBN(192, 1, name="branch7x7x3_1")(x)
        branch7x7x3 = _ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(branch7x7x3)
        branch7x7x3 = _ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(branch7x7x3)
        branch7x7x3 = _ConvBN(192, 3, strides=2, name="branch7x7x3_4")(branch7x7x3)
        return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3_stride_2(x)], axis=-1)


class _InceptionE(nn.Module):
    """Mixed_7b–c: towers that split into parallel 1×3 and 3×1 convolutions; 2048 channels out.

    `max_pool` selects the pool branch's pooling: the FID graph's Mixed_7c takes a max pool where the
    Inception paper (and Mixed_7b) takes an average.
    """

    max_pool: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch1x1 = _ConvBN(320, 1, name="branch1x1")(x)
        branch3x3 = _ConvBN(384, 1, name="branch3x3_1")(x)
        branch3x3 = jnp.concatenate([
            _ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(branch3x3),
            _ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(branch3x3),
        ], axis=-1)
        branch3x3dbl = _ConvBN(448, 1, name="branch3x3dbl_1")(x)
        branch3x3dbl = _ConvBN(384, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = jnp.concatenate([
            _ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(branch3x3dbl),
            _ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(branch3x3dbl),
        ], axis=-1)
        if self.max_pool:
            pooled = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3(x)
        branch_pool = _ConvBN(192, 1, name="branch_pool")(pooled)
        return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


class FIDInception(nn.Module):
    """The FID Inception-v3, inference only (BatchNorm uses the stored statistics; no dropout).

    Apply with the variables of `from_pytorch_fid` or `load_inception_params`:
    `pool3, logits = FIDInception().apply(variables, images)`.

    `logits` include the final layer's bias, as pytorch-fid's `fc`. The original Inception Score code
    (openai/improved-gan) multiplies pool3 by the weight matrix alone; those logits are
    `pool3 @ variables['params']['fc']['kernel']`.
    """

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Features of a batch of images.

        Args:
          images: (N, H, W, C) float in [0, 1], any H and W; C = 3 (RGB), or 1 (grey, repeated to RGB).

        Returns:
          pool3: (N, 2048) float32, the final average pool (the FID and KID features).
          logits: (N, 1008) float32, the classifier layer's output (for the Inception Score).

        Raises:
          ValueError: `images` is not 4-D with 1 or 3 channels.
        """
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"expected NHWC images with 1 or 3 channels, got shape {images.shape}")
        x = jnp.broadcast_to(images, images.shape[:3] + (3,)).astype(jnp.float32)
        x = resize_bilinear(x, INPUT_SIZE, INPUT_SIZE)
        x = 2 * x - 1
        x = _ConvBN(32, 3, strides=2, name="Conv2d_1a_3x3")(x)
        x = _ConvBN(32, 3, name="Conv2d_2a_3x3")(x)
        x = _ConvBN(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_stride_2(x)
        x = _ConvBN(80, 1, name="Conv2d_3b_1x1")(x)
        x = _ConvBN(192, 3, name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_stride_2(x)
        x = _InceptionA(32, name="Mixed_5b")(x)
        x = _InceptionA(64, name="Mixed_5c")(x)
        x = _InceptionA(64, name="Mixed_5d")(x)
        x = _InceptionB(name="Mixed_6a")(x)
        x = _InceptionC(128, name="Mixed_6b")(x)
        x = _InceptionC(160, name="Mixed_6c")(x)
        x = _InceptionC(160, name="Mixed_6d")(x)
        x = _InceptionC(192, name="Mixed_6e")(x)
        x = _InceptionD(name="Mixed_7a")(x)
        x = _InceptionE(name="Mixed_7b")(x)
        x = _InceptionE(max_pool=True, name="Mixed_7c")(x)
        pool3 = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(NUM_LOGITS, precision=_PRECISION, name="fc")(pool3)
        return pool3, logits


# Flax variable name → torchvision's (BatchNorm's `weight` is Flax's `scale`).
_TORCH_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                "var": "running_var"}
# Counts training steps of BatchNorm; present in the weights file, meaningless at inference.
_IGNORED = "num_batches_tracked"


def _to_flax_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)  # conv kernel OIHW → HWIO
    if array.ndim == 2:
        return array.T  # Linear weight (out, in) → (in, out)
    return array


@functools.cache
def _torch_layout() -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """torch name → (Flax variable path, Flax shape) for every FIDInception variable (traced only)."""
    shapes = jax.eval_shape(FIDInception().init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    layout = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        path = tuple(k.key for k in key_path)  # (collection, module, ..., variable)
        layout[".".join(path[1:-1] + (_TORCH_NAMES[path[-1]],))] = (path, leaf.shape)
    return layout


def from_pytorch_fid(state_dict: Mapping[str, Any]) -> Variables:
    """Converts pytorch-fid's FID Inception state_dict to the variables of `FIDInception`.

    Names are torchvision's: `Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.{weight, bias,
    running_mean, running_var}` (BatchNorm is affine), `fc.weight`, `fc.bias`; `num_batches_tracked`
    entries are ignored. Convolution kernels go from OIHW to HWIO and `fc.weight` is transposed.

    Args:
      state_dict: name → array (NumPy, or anything `np.asarray` takes), e.g. from `load_torch_file`.

    Returns:
      `{'params': ..., 'batch_stats': ...}` for `FIDInception().apply`; float32 NumPy arrays.

    Raises:
      ValueError: a name is missing or unexpected, or an array has the wrong shape.
    """
    layout = _torch_layout()
    state_dict = {key: value for key, value in state_dict.items() if key.rsplit(".", 1)[-1] != _IGNORED}
    found = {key: tuple(np.shape(value)) for key, value in state_dict.items()}
    expected = {key: _torch_shape(shape) for key, (_, shape) in layout.items()}
    differences = trees.differences(found, expected)
    if differences:
        raise ValueError("not the FID Inception state_dict of pytorch-fid (pt_inception-2015-12-05): "
                         + trees.summary(differences, shown=5))
    variables: Variables = {}
    for key, value in state_dict.items():
        path, _ = layout[key]
        node = variables
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _to_flax_layout(np.asarray(value, dtype=np.float32))
    return variables


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The torch shape of a Flax variable (the inverse of `_to_flax_layout`)."""
    if len(flax_shape) == 4:
        return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
    return tuple(flax_shape[::-1])


def _download(url: str, destination: str, sha256_prefix: str) -> None:
    """Downloads `url` to `destination` atomically, after checking the SHA-256 prefix of its bytes."""
    directory = os.path.dirname(destination)
    os.makedirs(directory, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=directory, prefix=os.path.basename(destination), suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if not digest.hexdigest().startswith(sha256_prefix):
            raise ValueError(f"the file downloaded from {url} has SHA-256 {digest.hexdigest()}, which does "
                             f"not start with {sha256_prefix}: the download is damaged or not the expected "
                             "file; nothing was cached")
        os.replace(partial, destination)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def download_inception_weights(cache_dir: str | None = None, *, url: str = FID_WEIGHTS_URL,
                               sha256_prefix: str = FID_WEIGHTS_SHA256_PREFIX) -> str:
    """The path of the cached weights file, downloading it first if it is not there.

    The download goes to a temporary file beside the cache entry and is renamed into place only when the
    SHA-256 of its bytes starts with `sha256_prefix`, so the cache never holds a partial or wrong file.

    Args:
      cache_dir: default `~/.cache/ncsn_jax`; the file is `<cache_dir>/pt_inception-2015-12-05-6726825d.pth`.
      url: where to download from; any URL urllib opens, e.g. `file://` for a local mirror.
      sha256_prefix: the expected beginning of the file's SHA-256 hex digest.

    Returns:
      The path of the cached file.

    Raises:
      MissingWeightsError: the download failed (e.g. no network), or its bytes do not have the expected
        checksum (nothing is cached); the message says where to put the file by hand.
    """
    path = os.path.join(os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR), FID_WEIGHTS_FILE)
    if not os.path.exists(path):
        try:
            _download(url, path, sha256_prefix)
        except ValueError as e:  # the checksum
            raise MissingWeightsError(f"{e}. Download {FID_WEIGHTS_URL} by hand and save it as {path}") from e
        except (urllib.error.URLError, OSError) as e:
            raise MissingWeightsError(
                f"could not download the FID Inception weights from {url} ({e}). Download "
                f"{FID_WEIGHTS_URL} by hand and save it as {path}, or set config.eval.inception_path to "
                "where the file is."
            ) from e
    return path


def load_inception_params(path: str | None = None, cache_dir: str | None = None, *,
                          url: str = FID_WEIGHTS_URL,
                          sha256_prefix: str = FID_WEIGHTS_SHA256_PREFIX) -> Variables:
    """The FID Inception variables from pytorch-fid's weights file, downloaded once if needed.

    Args:
      path: the weights file (`pt_inception-2015-12-05-6726825d.pth`, or a state_dict saved with
        torch.save under the same names); read as is, without a checksum. None: the cached file, see
        `download_inception_weights`.
      cache_dir, url, sha256_prefix: passed to `download_inception_weights` when `path` is None.

    Returns:
      `{'params': ..., 'batch_stats': ...}` for `FIDInception().apply`; float32 NumPy arrays.

    Raises:
      MissingWeightsError: `path` does not exist, or the download
        failed; the message says where to put the file.
      MissingWeightsError: the download's checksum does not match, or the file is damaged or not the
        FID Inception weights.
    """
    if path is None:
        path = download_inception_weights(cache_dir, url=url, sha256_prefix=sha256_prefix)
    elif not os.path.exists(path):
        raise MissingWeightsError(
            f"no FID Inception weights at {path} (config.eval.inception_path): download {FID_WEIGHTS_URL} "
            f"there, or leave the path unset to use the cache in {DEFAULT_CACHE_DIR}")
    try:
        state_dict = load_torch_file(path)
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"{path} holds a {type(state_dict).__name__}, not a state_dict")
        return from_pytorch_fid(state_dict)
    except ValueError as error:  # what the reader and the converter say of a damaged or foreign file
        raise MissingWeightsError(f"{error}. Download {FID_WEIGHTS_URL} and point config.eval.inception_path "
                                  "at it") from error


@jax.jit
def _features(variables: Variables, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    pool3, logits = FIDInception().apply(variables, images)
    # The Inception Score's logits: pool3 times the weights alone, as the original IS code computes them
    # (torch-fidelity's "logits_unbiased"); published IS values are of these.
    return pool3, logits - variables["params"]["fc"]["bias"]


def make_feature_fn(variables: Variables, batch_size: int | None = None
                    ) -> Callable[[np.ndarray | jax.Array], tuple[np.ndarray, np.ndarray]]:
    """A function images → (pool3, logits) as NumPy arrays, compiled once per input shape.

    Args:
      variables: from `load_inception_params` or `from_pytorch_fid`; put on the device once here.
      batch_size: if given, the images go through in chunks of this many (the last one zero-padded, so
        that every call has one shape and compiles once), bounding memory for large arrays.

    Returns:
      `features(images)`: images (N, H, W, C) float in [0, 1], C = 1 or 3 → pool3 (N, 2048) and the
      Inception Score's logits (N, 1008; without the classifier's bias), float32 NumPy arrays.
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    variables = jax.device_put(variables)

    def features(images: np.ndarray | jax.Array) -> tuple[np.ndarray, np.ndarray]:
        if len(images) == 0:
            raise ValueError("no images to compute features of")
        size = batch_size or len(images)
        pool3s, logitss = [], []
        for start in range(0, len(images), size):
            chunk = jnp.asarray(images[start:start + size])
            count = len(chunk)
            chunk = jnp.pad(chunk, [(0, size - count)] + [(0, 0)] * (chunk.ndim - 1))
            pool3, logits = _features(variables, chunk)
            pool3s.append(np.asarray(pool3)[:count])
            logitss.append(np.asarray(logits)[:count])
        return np.concatenate(pool3s), np.concatenate(logitss)

    return features
