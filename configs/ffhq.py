"""FFHQ at 256×256 (1024 px images resized to 256; 63,000 train / 7,000 test, random split): NCSNv2Deepest,
σ1 = 348, L = 2311, T = 3, ε = 9e-7.

    python main.py --config ffhq --config.data.path=/path/to/ffhq --mode train     # the workdir: runs/ffhq

Expect about 41 h on 8 V100 for the paper's 80k steps at batch 32 (Adam eps 1e-3); the paper shows samples
only (no FID).
"""
from .default import get_default_config


def get_config():
    config = get_default_config()
    config.data.dataset = "ffhq"
    config.data.image_size = 256
    config.model.name = "ncsnv2_deepest"
    config.model.sigma_begin = 348.0
    config.model.num_scales = 2311
    config.training.batch_size = 32
    config.training.n_iters = 80_000
    config.optim.eps = 1e-3
    config.sampling.batch_size = 36
    config.sampling.n_steps_each = 3
    config.sampling.step_lr = 9e-7
    return config
