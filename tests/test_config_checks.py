"""Bad config values are caught before any work, with the field named."""
import ml_collections
import pytest

from configs import bedroom, celeba, church, cifar10, default, ffhq, mnist, tiny, tower
from ncsn_jax.config_checks import check_config, check_mode, check_sampling, halvings
from ncsn_jax.errors import ConfigError
from ncsn_jax.models import NCSNv2, NCSNv2Deepest
from ncsn_jax.schedule import geometric_sigmas


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
    ("optim", "lr", -1.0, "config.optim.lr must be a positive number"),
    ("optim", "lr", float("nan"), "config.optim.lr must be a positive number, got nan"),
    ("optim", "lr", float("inf"), "config.optim.lr must be a positive number, got inf"),
    ("optim", "beta1", 1.0, "config.optim.beta1 must lie in [0, 1)"),
    ("optim", "beta2", float("nan"), "config.optim.beta2 must lie in [0, 1)"),
    ("optim", "eps", 0.0, "config.optim.eps must be a positive number"),
    ("optim", "weight_decay", -0.1, "config.optim.weight_decay must be a number >= 0"),
    ("model", "sigma_begin", float("inf"), "0 < config.model.sigma_end < config.model.sigma_begin"),
    ("sampling", "num_samples", 0, "config.sampling.num_samples must be a positive integer"),
    ("sampling", "n_interpolations", -2, "config.sampling.n_interpolations must be a positive integer"),
    ("sampling", "num_references", 0, "config.sampling.num_references must be a positive integer"),
    ("sampling", "completions_per_image", 0, "config.sampling.completions_per_image must be a positive integer"),
    ("training", "keep_every", 0, "config.training.keep_every must be a positive integer"),
    ("tune", "overlap_target", 1.0, "config.tune.overlap_target must lie in (0, 0.9973)"),
    ("eval", "begin_step", -1, "config.eval.begin_step must be an integer >= 0"),
    ("eval", "end_step", -1, "config.eval.end_step must be None (the latest) or an integer >= config.eval.begin_step"),
    ("optim", "lr_schedule", "linear", "config.optim.lr_schedule is 'linear'; choose one of ['constant', 'cosine']"),
    ("model", "dtype", "float16", "config.model.dtype is 'float16'"),
    ("model", "num_scales", 1, "config.model.num_scales must be at least 2"),
    ("data", "dataset", "imagenet", "config.data.dataset is 'imagenet'; choose one of bedroom"),
    ("data", "channels", 2, "config.data.channels must be 1 or 3"),
    ("data", "decode_processes", -1, "config.data.decode_processes must be None .* or a number of processes, "
                                     "got -1"),
    ("eval", "features", "clip", "config.eval.features is 'clip'"),
    ("eval", "features", "digits", "config.eval.features 'digits' needs 28×28 grey images"),
])
def test_bad_values_name_the_field(section, field, value, message):
    config = tiny.get_config()
    if field == "image_size":
        config.model.name = "ncsnv2_deeper"
    config[section][field] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        check_config(config)


def sampling_settings(**overrides):
    """The shipped default sampling settings, with T = 1, ε = 1e-5, batches of 8 and `overrides`."""
    values = default.get_default_config().sampling.to_dict()
    # A new ConfigDict: a value of another type than the default's (which update() refuses) reaches the checks.
    return ml_collections.ConfigDict({**values, "n_steps_each": 1, "step_lr": 1e-5, "batch_size": 8, **overrides})


def test_sampler_settings_that_cannot_run_are_config_errors():
    sigmas = geometric_sigmas(10.0, 0.01, 50)
    with pytest.raises(ConfigError, match="method 'langevin' is not one of ald, cas, pc, ode, ancestral, "):
        check_sampling(sampling_settings(method="langevin"), sigmas)
    with pytest.raises(ConfigError, match="ladder_stride 50 must be at least 1 and less than the ladder's 50"):
        check_sampling(sampling_settings(ladder_stride=50), sigmas)
    with pytest.raises(ConfigError, match="config.sampling.ladder_stride must be a positive integer, got 0"):
        check_sampling(sampling_settings(ladder_stride=0), sigmas)
    with pytest.raises(ConfigError, match=r"ε >= σL²·\(1 − 1/γ\)"):
        check_sampling(sampling_settings(method="cas", step_lr=1e-7), sigmas)
    with pytest.raises(ConfigError, match="config.sampling.corrector_steps -1 must be >= 0"):
        check_sampling(sampling_settings(method="pc", corrector_steps=-1), sigmas)
    check_sampling(sampling_settings(method="ald", corrector_steps=-1, snr=0.0), sigmas)  # pc's rules only
    with pytest.raises(ConfigError, match="--mode inpaint works with config.sampling.method ald or cas or ancestral"):
        check_mode(sampling_settings(method="ode"), "inpaint")
    with pytest.raises(ConfigError, match="--mode interpolate works with config.sampling.method ald"):
        check_mode(sampling_settings(method="cas", step_lr=1e-4), "interpolate")
    with pytest.raises(ConfigError, match="--mode interpolate works with config.sampling.method ald on the whole"):
        check_mode(sampling_settings(ladder_stride=2), "interpolate")
    for method in ("ald", "cas", "ancestral", "dpm_solver_2m_sde", "edm"):
        check_mode(sampling_settings(method=method), "inpaint")
    check_mode(sampling_settings(method="ode"), "sample")
    # The ρ-schedule: for the methods that take any levels, with a count and a ρ that can be.
    check_sampling(sampling_settings(method="ancestral", schedule="rho", num_levels=2), sigmas)
    with pytest.raises(ConfigError, match="config.sampling.schedule is 'karras'; choose one of ladder, rho"):
        check_sampling(sampling_settings(method="ancestral", schedule="karras"), sigmas)
    with pytest.raises(ConfigError, match="config.sampling.method 'cas' runs on the trained ladder only"):
        check_sampling(sampling_settings(method="cas", step_lr=1e-4, schedule="rho"), sigmas)
    with pytest.raises(ConfigError, match="ladder_stride 2 applies to config.sampling.schedule 'ladder'"):
        check_sampling(sampling_settings(method="edm", schedule="rho", ladder_stride=2), sigmas)
    for count in (1, 0, -3, 2.5, "24"):
        with pytest.raises(ConfigError, match="config.sampling.num_levels must be an integer of at least 2"):
            check_sampling(sampling_settings(method="ode", schedule="rho", num_levels=count), sigmas)
    for rho in (0.0, -1.0, float("nan"), float("inf"), "7"):
        with pytest.raises(ConfigError, match="config.sampling.rho must be a positive number"):
            check_sampling(sampling_settings(method="pc", schedule="rho", rho=rho), sigmas)
    for value in (-1.0, float("nan"), float("inf"), "high"):
        with pytest.raises(ConfigError, match="config.sampling.eta must be a finite number >= 0"):
            check_sampling(sampling_settings(method="dpm_solver_2m_sde", eta=value), sigmas)
    # edm's churn.
    for field in ("churn", "churn_min_sigma", "churn_max_sigma", "churn_noise"):
        for value in (-1.0, float("nan"), float("inf"), "high"):
            with pytest.raises(ConfigError, match=f"config.sampling.{field} must be a finite number >= 0"):
                check_sampling(sampling_settings(method="edm", **{field: value}), sigmas)
        check_sampling(sampling_settings(method="ald", **{field: -1.0}), sigmas)  # edm's rules only
    with pytest.raises(ConfigError, match="churn_min_sigma 2.0 must not exceed config.sampling.churn_max_sigma 1.0"):
        check_sampling(sampling_settings(method="edm", churn_min_sigma=2.0, churn_max_sigma=1.0), sigmas)
    with pytest.raises(ConfigError, match="churn_noise must be positive when config.sampling.churn is"):
        check_sampling(sampling_settings(method="edm", churn_noise=0.0), sigmas)
    # The config check runs them on the ladder that training creates.
    config = mnist.get_config()
    config.sampling.method = "pc"
    config.sampling.snr = 0.0
    with pytest.raises(ConfigError, match="config.sampling.snr 0.0 must be positive"):
        check_config(config)
    config = mnist.get_config()
    config.sampling.ladder_stride = config.model.num_scales
    with pytest.raises(ConfigError, match=f"less than the ladder's {config.model.num_scales} levels"):
        check_config(config)
