"""Settings shared by every paper config (NCSNv2 paper, appendix; the official configs).

Each dataset config starts from `get_default_config()` and sets what differs: the data, the network, the
noise ladder (σ1 = sigma_begin, σL = sigma_end, L = num_scales), T = n_steps_each and ε = step_lr.
"""
import ml_collections
from ml_collections import config_dict


def get_default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = data = ml_collections.ConfigDict()
    data.dataset = ""
    data.image_size = 32
    data.channels = 3
    data.random_flip = True  # train split only
    data.path = ""  # ffhq, image_folder, LSUN (LMDB or images): see ncsn_jax/data/sources.py
    data.tfds_data_dir = config_dict.placeholder(str)  # None: TFDS's default, ~/tensorflow_datasets
    # Image files that fail to decode are skipped with a warning; more than this fraction of a split is an error.
    data.max_undecodable_fraction = 0.01
    # Worker processes that decode images (not MNIST, which is in memory): None, one per core this process
    # may use; 0, threads of the training process instead (where TFDS's mock data is patched in, as in tests).
    data.decode_processes = config_dict.placeholder(int)

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
    training.snapshot_samples = 36  # images in each snapshot's grid, as the official code; 0: none
    training.keep_checkpoints = 3  # the latest checkpoints kept ...
    training.keep_every = 50_000  # ... plus every checkpoint whose step is a multiple of this

    config.optim = optim = ml_collections.ConfigDict()
    optim.lr = 1e-4
    optim.lr_schedule = "constant"  # as the paper; "cosine": from lr to 0 over training.n_iters
    optim.beta1 = 0.9
    optim.beta2 = 0.999
    optim.eps = 1e-8
    optim.weight_decay = 0.0

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.batch_size = 100
    # The sampler (ncsn_jax/sampling/methods.py): "ald", the paper's annealed Langevin dynamics; "cas",
    # consistent annealed sampling; "pc", the VE SDE's predictor-corrector; "ode", the probability flow;
    # "ancestral", "dpm_solver_2m_sde" and "edm", the diffusion literature's (ncsn_jax/sampling/diffusion.py).
    sampling.method = "ald"
    sampling.n_steps_each = 5  # T: ald and cas steps per noise level
    sampling.step_lr = 6.2e-6  # ε, the step size at σL (re-derived by technique 4 when ladder_stride > 1)
    sampling.denoise = True
    sampling.ladder_stride = 1  # k > 1: sample on every k-th σ of the trained ladder (both ends kept)
    sampling.corrector_steps = 1  # pc: Langevin corrector steps per level
    sampling.snr = 0.16  # pc: the corrector's signal-to-noise ratio (score_sde's CIFAR-10 value)
    # The levels the sampler visits: "ladder", the trained ladder (every ladder_stride-th σ); "rho",
    # num_levels levels from σ1 to σL spaced as Karras et al. (2022) with rho (all methods but ald and cas).
    sampling.schedule = "ladder"
    sampling.num_levels = 32  # what docs/samplers.md recommends for dpm_solver_2m_sde where nothing is measured
    sampling.rho = 7.0
    # dpm_solver_2m_sde: η, the noise of the reverse process its steps follow (1: the reverse SDE; 0: the ODE;
    # 4 matched ald on MNIST where 1 did not, docs/samplers.md).
    sampling.eta = 4.0
    # edm (Karras et al. 2022, Algorithm 2): S_churn, the levels [S_tmin, S_tmax] that churn, and S_noise.
    sampling.churn = 40.0
    sampling.churn_min_sigma = 0.0
    sampling.churn_max_sigma = 1000.0
    sampling.churn_noise = 1.0
    sampling.num_samples = 100  # --mode sample
    sampling.n_interpolations = 15  # --mode interpolate: columns per row
    sampling.num_references = 8  # --mode inpaint and interpolate: test images used (grid rows)
    sampling.completions_per_image = 7  # --mode inpaint: completions drawn for each test image

    # --mode stats and --mode eval: sample quality (ncsn_jax/modes/: stats.py computes the reference statistics,
    # sweep.py scores the checkpoints; ncsn_jax/evaluation/ has the features and the metrics).
    config.eval = evaluation = ml_collections.ConfigDict()
    evaluation.features = "auto"  # "inception" (FID Inception-v3), "digits" (MNIST classifier); auto: by dataset
    evaluation.inception_path = ""  # pt_inception-2015-12-05-6726825d.pth; "": the cache, downloaded once
    evaluation.stats_path = ""  # reference μ, Σ (.npz, TTUR format); "": <workdir>/stats/<dataset>_<split>.npz
    evaluation.stats_split = "train"  # the paper's CIFAR-10 FID is against the training set
    evaluation.batch_size = 100  # images per feature-extractor call
    evaluation.begin_step = 0  # --mode eval sweeps the checkpoints with begin_step <= step <= end_step
    evaluation.end_step = config_dict.placeholder(int)  # None: up to the latest
    evaluation.num_samples = 1_000  # per checkpoint of the sweep (the paper's model selection)
    evaluation.final_num_samples = 50_000  # then for the best checkpoint (0: skip)
    evaluation.kid_subsets = 100
    evaluation.kid_subset_size = 1_000
    evaluation.kid_reference_size = 5_000  # reference features kept in the stats file for KID

    # --mode tune: technique 2's overlap target C. The paper states 0.5; the released configs'
    # ladders correspond to about 0.567.
    config.tune = tune = ml_collections.ConfigDict()
    tune.overlap_target = 0.5
    return config
