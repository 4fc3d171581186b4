"""CelebA, 64×64 (centre crop 140, resize 64): NCSNv2, σ1 = 90, L = 500, T = 5, ε = 3.3e-6.

    python main.py --config celeba --mode train     # the workdir: runs/celeba
    python main.py --config celeba --mode eval

Expect about 29 h on 4 V100 for the paper's 210k steps at batch 128, and the paper's FID 10.23 with denoising
(10k samples against the test set; 28.86 without denoising).
"""
from .default import get_default_config


def get_config():
    config = get_default_config()
    config.data.dataset = "celeba"
    config.data.image_size = 64
    config.model.name = "ncsnv2"
    config.model.sigma_begin = 90.0
    config.model.num_scales = 500
    config.training.n_iters = 210_000
    config.sampling.batch_size = 64
    config.sampling.n_steps_each = 5
    config.sampling.step_lr = 3.3e-6
    # The paper's CelebA FID: 10k samples against the test set.
    config.eval.stats_split = "test"
    config.eval.final_num_samples = 10_000
    return config
