"""What the sample-quality metrics give for reference image sets, to read a model's scores against.

    python benchmarks/quality_baselines.py --config configs/mnist.py --num_images 200

Computes the statistics of the config's `eval.stats_split` with its feature extractor (as --mode stats),
then prints one JSON line with the Fréchet distance, Inception Score and KID (as --mode eval) of
`--num_images` images of each set:
  test_images   real images of the test split (a random subset): what a perfect model would score
  pixel_gaussian draws from a Gaussian with the mean and covariance of the training pixels: a baseline
                that knows the data's first two moments and nothing else
  uniform_noise U[0, 1) pixels
All are rounded to 8-bit levels first, as samples are. Use the same number of images as
`eval.num_samples` when comparing with a model: the Fréchet distance of a finite sample is biased upwards,
the more so the fewer the images.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import configs  # noqa: E402  (the checkout's configs/, loaded by name or path)
from ncsn_jax.data import pipeline  # noqa: E402
from ncsn_jax.evaluation import features  # noqa: E402
from ncsn_jax.modes import stats, sweep  # noqa: E402
from ncsn_jax.run import images  # noqa: E402

configs.define_config_flag("config", None, "Config file, e.g. configs/mnist.py.", lock_config=True)
flags.DEFINE_integer("num_images", 200, "Images in each set.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def split_images(config, split):
    batches = pipeline.get_dataset(config, split, config.eval.batch_size, repeat=False,
                                   process_index=0, process_count=1)
    return np.concatenate(list(batches))


def main(_):
    config = FLAGS.config
    extractor = features.feature_extractor(config)
    reference_statistics = stats.dataset_statistics(config, extractor, config.eval.stats_split,
                                                    progress_bar=False)
    rng = np.random.default_rng(config.seed)
    count = FLAGS.num_images

    test = split_images(config, "test")
    train = split_images(config, "train").reshape(-1, *test.shape[1:])
    flat = train.reshape(len(train), -1).astype(np.float64)
    gaussian = rng.multivariate_normal(flat.mean(0), np.cov(flat, rowvar=False), size=count, method="eigh")
    sets = {
        "test_images": test[rng.choice(len(test), size=min(count, len(test)), replace=False)],
        "pixel_gaussian": gaussian.reshape(count, *test.shape[1:]),
        "uniform_noise": rng.random((count, *test.shape[1:])),
    }
    result = {"config": config.data.dataset, "features": extractor.name, "num_images": count}
    for name, image_set in sets.items():
        set_features, logits = extractor.fn(images.to_8bit_levels(image_set.astype(np.float32)))
        result[name] = sweep.quality_metrics(set_features, logits, reference_statistics, config)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
