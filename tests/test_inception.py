"""FID Inception-v3: the Flax port reproduces pytorch-fid's network, and its weights are fetched safely.

The reference (tests/data/ref_fid_inception_random.npz, see tests/data/README.md) is pytorch-fid's
network with every parameter and BatchNorm statistic drawn by `random_state_dict` below, so the
comparison exercises the architecture and the conversion without the 95 MB published weights.
"""
import functools
import hashlib
import json
import pathlib

import numpy as np
import pytest

from ncsn_jax.errors import MissingWeightsError
from ncsn_jax.evaluation import inception

REFERENCE = pathlib.Path(__file__).parent / "data" / "ref_fid_inception_random.npz"


@functools.cache
def reference() -> dict:
    with np.load(REFERENCE) as data:
        return {k: data[k] for k in data.files}


def random_state_dict(seed: int = 0) -> dict:
    """The weights the reference was computed with: drawn key by key, in sorted key order.

    Scales keep activations O(1) through the 94 layers: He-normal convolutions, BatchNorm scale and
    variance in [0.5, 1.5), small biases and means.
    """
    keys_shapes = json.loads(str(reference()["keys_shapes"]))
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in sorted(keys_shapes):
        name = key.rsplit(".", 1)[-1]
        if name == "num_batches_tracked":
            state[key] = np.zeros(shape, np.int64)
        elif name == "weight" and len(shape) > 1:
            fan_in = int(np.prod(shape[1:]))
            state[key] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        elif name in ("weight", "running_var"):
            state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            state[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return state


@pytest.fixture(scope="module")
def variables():
    return inception.from_pytorch_fid(random_state_dict())


def nhwc(a: np.ndarray) -> np.ndarray:
    return np.transpose(a, (0, 2, 3, 1))


def relative_error(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def test_matches_pytorch_fid_on_random_weights(variables):
    ref = reference()
    pool3, logits = inception.make_feature_fn(variables)(nhwc(ref["images"]))
    assert pool3.shape == (2, 2048) and logits.shape == (2, 1008)
    assert pool3.dtype == logits.dtype == np.float32
    # Measured on CPU: 4e-7 (pool3) and 7e-7 (logits). A pool or BatchNorm ε that differs from
    # pytorch-fid gives 2e-2 to 4e-2. The feature function's logits are the Inception Score's, without
    # the fc bias that pytorch-fid's output includes.
    assert relative_error(pool3, ref["pool3"]) < 1e-5
    assert relative_error(logits + variables["params"]["fc"]["bias"], ref["logits"]) < 1e-5


@pytest.mark.parametrize("case", ["up", "down"])
def test_resize_matches_torch_interpolate(case):
    ref = reference()
    images, expected = nhwc(ref[f"resize_{case}_in"]), nhwc(ref[f"resize_{case}_out"])
    resized = inception.resize_bilinear(images, *expected.shape[1:3])
    np.testing.assert_allclose(resized, expected, rtol=1e-6, atol=1e-6)


def test_grey_is_repeated_and_chunks_are_exact(variables):
    grey = np.random.default_rng(3).uniform(size=(3, 40, 40, 1)).astype(np.float32)
    pool3, logits = inception.make_feature_fn(variables, batch_size=2)(grey)
    assert pool3.shape == (3, 2048) and logits.shape == (3, 1008)
    rgb_pool3, rgb_logits = inception.make_feature_fn(variables)(np.repeat(grey, 3, axis=-1))
    np.testing.assert_allclose(pool3, rgb_pool3, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, rgb_logits, rtol=1e-5, atol=1e-4)


def test_conversion_names_each_problem():
    state = random_state_dict()
    del state["Mixed_7c.branch_pool.bn.running_var"]
    state["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
    state["fc.weight"] = np.zeros((1000, 2048), np.float32)
    with pytest.raises(ValueError) as error:
        inception.from_pytorch_fid(state)
    message = str(error.value)
    assert "missing Mixed_7c.branch_pool.bn.running_var" in message
    assert "unexpected AuxLogits.fc.weight" in message
    assert "fc.weight is (1000, 2048), expected (1008, 2048)" in message


def test_images_must_have_one_or_three_channels(variables):
    with pytest.raises(ValueError, match="1 or 3 channels"):
        inception.FIDInception().apply(variables, np.zeros((1, 8, 8, 2), np.float32))


def test_download_is_cached_after_its_checksum_is_checked(tmp_path):
    source = tmp_path / "mirror.pth"
    source.write_bytes(b"stand-in for the weights file")
    prefix = hashlib.sha256(source.read_bytes()).hexdigest()[:8]
    cache = tmp_path / "cache"
    path = inception.download_inception_weights(str(cache), url=source.as_uri(), sha256_prefix=prefix)
    assert pathlib.Path(path) == cache / inception.FID_WEIGHTS_FILE
    assert pathlib.Path(path).read_bytes() == source.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == [inception.FID_WEIGHTS_FILE]
    source.unlink()  # a cached file is used as is, with no second download
    assert inception.download_inception_weights(str(cache), url=source.as_uri(), sha256_prefix=prefix) == path


def test_a_download_with_the_wrong_checksum_leaves_nothing(tmp_path):
    source = tmp_path / "mirror.pth"
    source.write_bytes(b"not the weights file")
    cache = tmp_path / "cache"
    with pytest.raises(MissingWeightsError, match=inception.FID_WEIGHTS_SHA256_PREFIX):
        inception.load_inception_params(cache_dir=str(cache), url=source.as_uri())
    assert list(cache.iterdir()) == []


def test_without_network_the_error_says_where_to_put_the_file(tmp_path):
    unreachable = (tmp_path / "absent.pth").as_uri()
    with pytest.raises(MissingWeightsError, match=r"config\.eval\.inception_path") as error:
        inception.load_inception_params(cache_dir=str(tmp_path / "cache"), url=unreachable)
    assert str(tmp_path / "cache" / inception.FID_WEIGHTS_FILE) in str(error.value)
    with pytest.raises(MissingWeightsError, match=r"config\.eval\.inception_path"):
        inception.load_inception_params(path=str(tmp_path / "elsewhere.pth"))
