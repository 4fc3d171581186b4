"""Settings shared by every paper config (NCSNv2 paper, appendix; the official configs).

Each dataset config starts from `get_default_config()` and sets what differs: the data, the network, the
noise ladder (σ1 = sigma_begin, σL = sigma_end, L = num_scales), T = n_steps_each and ε = step_lr.
"""
import ml_collections


def get_default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = data = ml_collections.ConfigDict()
    data.dataset = ""
    data.image_size = 32
    data.channels = 3
    data.random_flip = True

    config.model = model = ml_collections.ConfigDict()
    model.name = "ncsnv2"
    model.ngf = 128
    model.sigma_begin = 50.0
    model.sigma_end = 0.01
    model.num_scales = 232
    model.ema_rate = 0.999
    model.dtype = "float32"  # compute dtype; "bfloat16" on TPUs and recent GPUs

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 128
    training.n_iters = 300_000
    training.log_freq = 100
    training.eval_freq = 100  # test loss with the EMA weights, as the official code
    training.snapshot_freq = 5_000  # checkpoint and a sample grid

    config.optim = optim = ml_collections.ConfigDict()
    optim.lr = 1e-4
    optim.beta1 = 0.9
    optim.beta2 = 0.999
    optim.eps = 1e-8
    optim.weight_decay = 0.0

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.batch_size = 100
    sampling.n_steps_each = 5
    sampling.step_lr = 6.2e-6
    sampling.denoise = True
    return config
