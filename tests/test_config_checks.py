"""Bad config values are caught before any work, with the field named."""
import pytest

from configs import bedroom, celeba, church, cifar10, ffhq, mnist, tiny, tower
from ncsn_jax.config_checks import check_config, halvings
from ncsn_jax.errors import ConfigError
from ncsn_jax.models import NCSNv2, NCSNv2Deepest


def test_paper_configs_pass():
    for module in (bedroom, celeba, church, cifar10, ffhq, mnist, tiny, tower):
        check_config(module.get_config())


def test_halvings_follow_the_networks_stage_tables():
    # The paper's image sizes over the resolution each network ends at (NCSNv2: 32 → 16, as the official
    # code's res2 'down' block; the dilated 'down' blocks keep it).
    assert halvings("ncsnv2") == 1 and halvings("ncsnv2_deeper") == 2 and halvings("ncsnv2_deepest") == 3
    assert sum(stage.downsample for stage in NCSNv2.stages) == 3  # three 'down' flags, one of them halving
    assert [stage.name for stage in NCSNv2Deepest.stages if stage.halves_resolution] == ["res2", "res3", "res31"]


@pytest.mark.parametrize("section, field, value, message", [
    ("training", "batch_size", 0, "config.training.batch_size must be a positive integer"),
    ("model", "name", "unet", "config.model.name is 'unet'"),
    ("data", "image_size", 30, "config.data.image_size 30 must be divisible by 4 for ncsnv2_deeper"),
    ("model", "sigma_end", 60.0, "0 < config.model.sigma_end < config.model.sigma_begin"),
    ("sampling", "step_lr", 1.0, "config.sampling.step_lr 1.0 must lie in"),
    ("model", "ema_rate", 1.0, "config.model.ema_rate"),
    ("optim", "lr", -1.0, "config.optim.lr must be positive"),
    ("optim", "lr_schedule", "linear", "config.optim.lr_schedule is 'linear'; choose one of ['constant', 'cosine']"),
    ("model", "dtype", "float16", "config.model.dtype is 'float16'"),
    ("model", "num_scales", 1, "config.model.num_scales must be at least 2"),
    ("data", "dataset", "imagenet", "config.data.dataset is 'imagenet'; choose one of bedroom"),
    ("data", "channels", 2, "config.data.channels must be 1 or 3"),
    ("eval", "features", "clip", "config.eval.features is 'clip'"),
    ("eval", "features", "digits", "config.eval.features 'digits' needs 28×28 grey images"),
])
def test_bad_values_name_the_field(section, field, value, message):
    config = tiny.get_config()
    if field == "image_size":
        config.model.name = "ncsnv2_deeper"
    config[section][field] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        check_config(config)
