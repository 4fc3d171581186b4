"""LSUN tower at 128×128: the bedroom settings (NCSNv2Deeper, σ1 = 190, L = 1086, T = 3, ε = 1.8e-6).

    python main.py --config configs/tower.py --workdir runs/tower --mode train

Paper: 150k steps at batch 128, about 52 h on 8 V100; samples only (no FID reported).
"""
from configs import bedroom


def get_config():
    config = bedroom.get_config()
    config.data.dataset = "tower"
    return config
