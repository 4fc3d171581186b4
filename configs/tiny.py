"""A tiny NCSNv2 on 16×16 images for tests: seconds per step on a laptop CPU, meaningless samples.

    python main.py --config tiny --mode train     # 20 steps; the workdir: runs/tiny
"""
from .default import get_default_config


def get_config():
    config = get_default_config()
    config.data.dataset = "cifar10"
    config.data.image_size = 16
    config.model.name = "ncsnv2"
    config.model.ngf = 8
    config.model.sigma_begin = 10.0
    config.model.num_scales = 10
    config.training.batch_size = 8
    config.training.n_iters = 20
    config.training.log_freq = 5
    config.training.eval_freq = 5
    config.training.snapshot_freq = 10
    config.sampling.batch_size = 8
    config.sampling.n_steps_each = 2
    config.sampling.step_lr = 1e-4
    return config
