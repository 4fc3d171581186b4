"""Official PyTorch weights → Flax: the converted network reproduces the official outputs."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncsn_jax import losses, schedule
from ncsn_jax.models import NCSNv2
from ncsn_jax.models.score import get_score_fn
from ncsn_jax.official import convert
from ncsn_jax.sampling import langevin
from tests.fixtures import nhwc, official_state_dict, reference

MODEL = NCSNv2(ngf=16)


def template():
    return jax.eval_shape(MODEL.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.ones((1,)))["params"]


def official_score_fn():
    params = convert.from_official(official_state_dict(), template())
    return get_score_fn(MODEL, params)


def relative_error(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def test_forward_matches_official():
    ref = reference()
    sigmas = ref["param/sigmas"]
    out = official_score_fn()(nhwc(ref["x"]), sigmas[ref["labels"]])
    assert relative_error(out, nhwc(ref["out"])) < 1e-5


def test_data_parallel_prefix_is_accepted_and_sigmas_are_read():
    prefixed = {f"module.{k}": v for k, v in official_state_dict().items()}
    plain = convert.from_official(official_state_dict())
    for a, b in zip(jax.tree.leaves(convert.from_official(prefixed)), jax.tree.leaves(plain)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(convert.official_sigmas(prefixed), reference()["param/sigmas"])


def test_dsm_loss_matches_official():
    ref = reference()
    sigma = ref["param/sigmas"][ref["loss_labels"]]
    loss = losses.dsm_loss_given_noise(official_score_fn(), nhwc(ref["x"]), sigma, nhwc(ref["loss_noise"]))
    assert abs(float(loss) - float(ref["loss"])) / float(ref["loss"]) < 1e-5


def test_langevin_and_denoising_steps_match_official():
    ref = reference()
    score_fn = official_score_fn()
    sigmas = ref["param/sigmas"]
    x0 = nhwc(ref["ald_x0"])
    step_size = 6.2e-6 * (sigmas[0] / sigmas[-1]) ** 2
    np.testing.assert_allclose(step_size, ref["ald_step_size"], rtol=1e-6)
    x1 = langevin.langevin_step(x0, score_fn(x0, np.full(2, sigmas[0])), nhwc(ref["ald_z"]), step_size)
    assert relative_error(x1, nhwc(ref["ald_x1"])) < 1e-5
    denoised = langevin.denoise_step(x1, score_fn(x1, np.full(2, sigmas[-1])), sigmas[-1])
    assert relative_error(denoised, nhwc(ref["ald_denoised"])) < 1e-5


def test_weights_for_another_network_are_a_clear_error():
    wrong = jax.eval_shape(
        NCSNv2(ngf=8).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.ones((1,))
    )["params"]
    with pytest.raises(ValueError, match="config.model.ngf"):
        convert.from_official(official_state_dict(), wrong)
    truncated = {k: v for k, v in official_state_dict().items() if not k.startswith("refine4.")}
    with pytest.raises(ValueError, match="missing"):
        convert.from_official(truncated, template())


def test_missing_checkpoint_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no official checkpoint"):
        convert.load_official_checkpoint(tmp_path / "checkpoint_5000.pth")


def test_official_checkpoint_file_reads_without_torch():
    # An official-format checkpoint of an ngf-4 NCSNv2 (tests/data/README.md): [model state with the
    # `module.` prefix and σ buffer, Adam state, epoch, step, EMA state = 2 × model weights].
    path = pathlib.Path(__file__).parent / "data" / "official_checkpoint_ngf4.pth"
    small = jax.eval_shape(NCSNv2(ngf=4).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.ones((1,)))
    ema_params, sigmas = convert.load_official_checkpoint(path, template=small["params"])
    raw_params, _ = convert.load_official_checkpoint(path, use_ema=False, template=small["params"])
    for ema, raw in zip(jax.tree.leaves(ema_params), jax.tree.leaves(raw_params)):
        np.testing.assert_array_equal(ema, 2 * raw)
    np.testing.assert_allclose(sigmas, schedule.geometric_sigmas(50.0, 0.01, 10), rtol=1e-6)
    with pytest.raises(ValueError, match="do not fit this network"):
        convert.load_official_checkpoint(path, template=template())


def test_official_checkpoint_file_loads_ema_weights(tmp_path):
    torch = pytest.importorskip("torch")
    state = {f"module.{k}": torch.from_numpy(v) for k, v in official_state_dict().items()}
    ema = {k: torch.from_numpy(v * 2) for k, v in official_state_dict().items() if k != "sigmas"}
    path = tmp_path / "checkpoint_5000.pth"
    torch.save([state, {"state": {}, "param_groups": []}, 1, 5000, ema], path)

    ema_params, sigmas = convert.load_official_checkpoint(path, template=template())
    raw_params, _ = convert.load_official_checkpoint(path, use_ema=False, template=template())
    np.testing.assert_array_equal(sigmas, reference()["param/sigmas"])
    np.testing.assert_allclose(ema_params["begin_conv"]["bias"], 2 * raw_params["begin_conv"]["bias"])
    np.testing.assert_array_equal(
        raw_params["res2_0"]["conv2"]["conv"]["kernel"],
        reference()["param/res2.0.conv2.conv.weight"].transpose(2, 3, 1, 0),
    )
