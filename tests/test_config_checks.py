"""Bad config values are caught before any work, with the field named."""
import pytest

from configs import cifar10, ffhq, tiny
from ncsn_jax.config_checks import check_config


def test_paper_configs_pass():
    for module in (cifar10, ffhq, tiny):
        check_config(module.get_config())


@pytest.mark.parametrize("section, field, value, message", [
    ("training", "batch_size", 0, "config.training.batch_size must be a positive integer"),
    ("model", "name", "unet", "config.model.name is 'unet'"),
    ("data", "image_size", 30, "config.data.image_size 30 must be divisible by 4 for ncsnv2_deeper"),
    ("model", "sigma_end", 60.0, "0 < config.model.sigma_end < config.model.sigma_begin"),
    ("sampling", "step_lr", 1.0, "config.sampling.step_lr 1.0 must lie in"),
    ("model", "ema_rate", 1.0, "config.model.ema_rate"),
    ("optim", "lr", -1.0, "config.optim.lr must be positive"),
])
def test_bad_values_name_the_field(section, field, value, message):
    config = tiny.get_config()
    if field == "image_size":
        config.model.name = "ncsnv2_deeper"
    config[section][field] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        check_config(config)
