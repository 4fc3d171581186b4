"""The three networks: official parameter counts, InstanceNorm++ and resize against references."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import ndimage

from ncsn_jax.models import NCSNv2, NCSNv2Deeper, NCSNv2Deepest, get_model
from ncsn_jax.models.layers import InstanceNormPlus, resize_bilinear_align_corners
from ncsn_jax.models.score import get_score_fn
from tests.fixtures import nhwc, reference


def param_count(model, image_size, channels=3):
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, channels)), jnp.ones((1,))
    )
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))


@pytest.mark.parametrize(
    "model, image_size, expected",
    [
        (NCSNv2(ngf=128), 32, 29_694_083),
        (NCSNv2(ngf=128), 64, 29_694_083),  # convolutional: any resolution
        (NCSNv2Deeper(ngf=128), 128, 83_445_379),
        (NCSNv2Deepest(ngf=128), 256, 94_132_611),
        (NCSNv2(ngf=16), 32, 466_451),
    ],
)
def test_parameter_counts_match_the_official_networks(model, image_size, expected):
    assert param_count(model, image_size) == expected


def test_instance_norm_plus_matches_official():
    ref = reference()
    params = {"alpha": ref["inorm_alpha"], "gamma": ref["inorm_gamma"], "beta": ref["inorm_beta"]}
    out = InstanceNormPlus().apply({"params": params}, nhwc(ref["inorm_x"]))
    np.testing.assert_allclose(out, nhwc(ref["inorm_out"]), atol=1e-6, rtol=0)


def test_instance_norm_plus_uses_unbiased_variance_of_channel_means():
    # Each channel is its mean plus one shared zero-mean pattern p, and γ = α = 1, β = 0: the output is
    # p/√(var p + ε) plus the channel means standardised with the UNBIASED variance (C − 1).
    means = np.array([0.0, 1.0, 3.0, 7.0], np.float32)
    pattern = np.random.default_rng(0).normal(size=(1, 3, 5, 1)).astype(np.float32)
    pattern -= pattern.mean()
    params = {"alpha": np.ones(4), "gamma": np.ones(4), "beta": np.zeros(4)}
    out = np.asarray(InstanceNormPlus().apply({"params": params}, pattern + means))
    expected = pattern / np.sqrt(pattern.var() + 1e-5) + (means - means.mean()) / np.sqrt(
        means.var(ddof=1) + 1e-5
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_size, out_size", [((4, 4), (8, 8)), ((5, 3), (9, 7)), ((8, 6), (8, 11))])
def test_resize_is_bilinear_with_aligned_corners(in_size, out_size):
    x = np.random.default_rng(0).normal(size=(2, *in_size, 3)).astype(np.float32)
    out = np.asarray(resize_bilinear_align_corners(jnp.asarray(x), out_size))
    # scipy's zoom with grid_mode=False maps corner pixel centres onto each other: align_corners=True.
    zoom = (1, out_size[0] / in_size[0], out_size[1] / in_size[1], 1)
    expected = ndimage.zoom(x, zoom, order=1, grid_mode=False, mode="nearest")
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(out[:, [0, -1]][:, :, [0, -1]], x[:, [0, -1]][:, :, [0, -1]], atol=1e-6)


def tiny_config(name="ncsnv2", dtype="float32"):
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict({"name": name, "ngf": 8, "dtype": dtype})
    config.data = ml_collections.ConfigDict({"channels": 1})
    return config


@pytest.mark.parametrize("name, image_size", [("ncsnv2", 16), ("ncsnv2_deeper", 16), ("ncsnv2_deepest", 32)])
def test_networks_keep_the_input_shape(name, image_size):
    model = get_model(tiny_config(name))
    x = jax.random.uniform(jax.random.key(0), (2, image_size, image_size, 1))
    sigma = jnp.array([1.0, 2.0])
    params = model.init(jax.random.key(1), x, sigma)
    out = model.apply(params, x, sigma)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert np.all(np.isfinite(out))


def test_score_is_the_network_output_divided_by_sigma():
    # Technique 3: s(x, σ) = f(x)/σ, so σ·s(x, σ) does not depend on σ.
    model = get_model(tiny_config())
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1))
    params = model.init(jax.random.key(1), x, jnp.ones(2))
    small = model.apply(params, x, jnp.array([0.5, 3.0]))
    large = model.apply(params, x, jnp.array([4.0, 0.01]))
    np.testing.assert_allclose(small * np.array([0.5, 3.0])[:, None, None, None],
                               large * np.array([4.0, 0.01])[:, None, None, None], rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_agrees_roughly():
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1))
    sigma = jnp.ones(2)
    params = get_model(tiny_config()).init(jax.random.key(1), x, sigma)
    bf16 = get_model(tiny_config(dtype="bfloat16"))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(bf16.init(jax.random.key(1), x, sigma)))
    full = get_model(tiny_config()).apply(params, x, sigma)
    half = bf16.apply(params, x, sigma)
    assert half.dtype == jnp.float32
    assert float(jnp.linalg.norm(half - full) / jnp.linalg.norm(full)) < 0.05


def test_bad_inputs_are_clear_errors():
    # (Bad config values, e.g. model.name or model.dtype, are config_checks' to refuse: test_config_checks.)
    model = get_model(tiny_config())
    with pytest.raises(ValueError, match="even height and width"):
        model.init(jax.random.key(0), jnp.zeros((1, 15, 15, 1)), jnp.ones(1))
    with pytest.raises(ValueError, match="1 channels"):
        model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.ones(1))


def test_score_fns_of_equal_networks_share_one_compilation_key():
    # Samplers trace the parameters of a get_score_fn Partial; the network itself is part of the
    # compilation key, so a rebuilt but identical network must compare equal.
    x, sigma = jnp.zeros((1, 16, 16, 1)), jnp.ones(1)
    params = get_model(tiny_config()).init(jax.random.key(0), x, sigma)["params"]
    first = get_score_fn(get_model(tiny_config()), params)
    second = get_score_fn(get_model(tiny_config()), jax.tree.map(lambda p: p + 1, params))
    assert jax.tree_util.tree_structure(first) == jax.tree_util.tree_structure(second)
    other = get_score_fn(get_model(tiny_config("ncsnv2_deeper")), params)
    assert jax.tree_util.tree_structure(first) != jax.tree_util.tree_structure(other)
    np.testing.assert_allclose(first(x, sigma), get_model(tiny_config()).apply({"params": params}, x, sigma))
