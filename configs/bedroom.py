"""LSUN bedroom at 128×128 (resize the short side, centre crop): NCSNv2Deeper, σ1 = 190, L = 1086, T = 3,
ε = 1.8e-6.

    python main.py --config bedroom --config.data.path=/path/to/lsun --mode train     # the workdir: runs/bedroom

Expect about 52 h on 8 V100 for the paper's 150k steps at batch 128; the paper shows samples only (no FID).
"""
from .default import get_default_config


def get_config():
    config = get_default_config()
    config.data.dataset = "bedroom"
    config.data.image_size = 128
    config.model.name = "ncsnv2_deeper"
    config.model.sigma_begin = 190.0
    config.model.num_scales = 1086
    config.training.n_iters = 150_000
    config.sampling.batch_size = 36
    config.sampling.n_steps_each = 3
    config.sampling.step_lr = 1.8e-6
    return config
