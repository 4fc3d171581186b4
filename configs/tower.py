"""LSUN tower at 128×128: the bedroom settings (NCSNv2Deeper, σ1 = 190, L = 1086, T = 3, ε = 1.8e-6).

    python main.py --config tower --config.data.path=/path/to/lsun --mode train     # the workdir: runs/tower

Expect about 52 h on 8 V100 for the paper's 150k steps at batch 128; the paper shows samples only (no FID).
"""
from . import bedroom


def get_config():
    config = bedroom.get_config()
    config.data.dataset = "tower"
    return config
