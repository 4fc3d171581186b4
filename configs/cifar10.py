"""CIFAR-10, 32×32: NCSNv2, σ1 = 50, L = 232, T = 5, ε = 6.2e-6.

    python main.py --config cifar10 --mode train     # the workdir: runs/cifar10
    python main.py --config cifar10 --mode eval

Expect about 22 h on 2 V100 for the paper's 300k steps at batch 128, and the paper's FID 10.87 and IS 8.40
with denoising (50k samples against the training set; 31.75 / 8.73 without denoising).
"""
from .default import get_default_config


def get_config():
    config = get_default_config()
    config.data.dataset = "cifar10"
    config.data.image_size = 32
    config.model.name = "ncsnv2"
    config.model.sigma_begin = 50.0
    config.model.num_scales = 232
    config.training.n_iters = 300_000
    config.sampling.batch_size = 100
    config.sampling.n_steps_each = 5
    config.sampling.step_lr = 6.2e-6
    return config
