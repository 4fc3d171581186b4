"""Training without TensorFlow: a prepared `array_record` TFDS dataset reads through the training pipeline
in a process where TensorFlow cannot be imported, batch for batch as where it is loaded.

The dataset is TFDS's own `cifar10` builder run on a few made-up images (its download replaced), written
under tmp_path; nothing is downloaded.
"""
import pathlib
import subprocess
import sys
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import cifar

from configs import cifar10
from ncsn_jax.data import pipeline

REPO = pathlib.Path(__file__).parent.parent

# First thing in a fresh interpreter: the path finder that imports installed packages stops seeing
# TensorFlow, so that `import tensorflow` raises ModuleNotFoundError and importlib.util.find_spec returns
# None, as where it is not installed (TFDS and etils decide by find_spec whether to use it).
WITHOUT_TENSORFLOW = '''
import importlib.machinery
import sys


class _PathFinderWithoutTensorFlow(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] == "tensorflow":
            return None
        return super().find_spec(name, path, target)


assert "tensorflow" not in sys.modules
sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = _PathFinderWithoutTensorFlow
'''

# Reads 6 train batches of 8 (two epochs of the 24 images, shuffled and flipped) and the whole test split in
# batches of 4 (in order), and records which TensorFlow modules were loaded.
READ_BATCHES = '''
import importlib.util
import sys

import numpy as np

from configs import cifar10
from ncsn_jax.data import pipeline

config = cifar10.get_config()
config.data.tfds_data_dir = sys.argv[1]
train = pipeline.get_dataset(config, "train", 8, process_index=0, process_count=1)
train_batches = np.stack([next(train) for _ in range(6)])
train.close()
test_batches = np.stack(list(pipeline.get_dataset(config, "test", 4, process_index=0, process_count=1, repeat=False)))
np.savez(sys.argv[2], train=train_batches, test=test_batches,
         tensorflow_modules=sorted(name for name in sys.modules if name.partition(".")[0] == "tensorflow"),
         tensorflow_found=importlib.util.find_spec("tensorflow") is not None)
'''


def write_tiny_cifar10(data_dir, num_train=24, num_test=8) -> dict[str, np.ndarray]:
    """Builds TFDS `cifar10` in `array_record` format under `data_dir` from random 32×32 images.

    Image i of a split has red level i in its whole first row (unchanged by a horizontal flip), so a read
    image names itself.

    Returns:
      Per split, the uint8 images (n, 32, 32, 3), image i at index i.
    """
    rng = np.random.default_rng(0)
    images = {}
    for split, count in (("train", num_train), ("test", num_test)):
        images[split] = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        images[split][:, 0, :, 0] = np.arange(count)[:, None]

    def examples(split):
        for i, image in enumerate(images[split]):
            yield i, {"id": f"{split}_{i:05d}", "image": image, "label": i % 10}

    def split_generators(self, dl_manager):
        return {split: examples(split) for split in images}

    with mock.patch.object(cifar.Cifar10, "_split_generators", split_generators):
        tfds.builder("cifar10", data_dir=str(data_dir)).download_and_prepare(file_format="array_record")
    return images


def read_batches(data_dir, out, prelude):
    """Runs READ_BATCHES in a fresh interpreter after `prelude`; returns what it saved."""
    result = subprocess.run([sys.executable, "-c", prelude + READ_BATCHES, str(data_dir), str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out) as saved:
        return {key: saved[key] for key in saved.files}


def test_training_pipeline_reads_array_record_without_tensorflow(tmp_path):
    images = write_tiny_cifar10(tmp_path / "tfds")
    without = read_batches(tmp_path / "tfds", tmp_path / "without.npz", WITHOUT_TENSORFLOW)
    # The other run loads TensorFlow first, so that TFDS may take its TensorFlow paths.
    loaded = read_batches(tmp_path / "tfds", tmp_path / "loaded.npz", "import tensorflow\n")
    assert not without["tensorflow_found"] and without["tensorflow_modules"].size == 0
    assert loaded["tensorflow_found"] and "tensorflow" in loaded["tensorflow_modules"]
    for split in ("train", "test"):
        np.testing.assert_array_equal(without[split], loaded[split])

    # And they are the images written: each batch position holds the image its red first row names,
    # mirrored where the documented plan flips it; each epoch holds every training image once.
    config = cifar10.get_config()
    pixels = np.rint(without["train"] * 255).astype(np.uint8)
    ids = pixels[:, :, 0, 0, 0].astype(int)
    for step, (batch, batch_ids) in enumerate(zip(pixels, ids)):
        _, flips = pipeline.batch_plan(step, batch_size=8, host_examples=np.arange(24), seed=(config.seed, 0),
                                       shuffle=True, flip=True)
        expected = np.where(flips[:, None, None, None], images["train"][batch_ids, :, ::-1], images["train"][batch_ids])
        np.testing.assert_array_equal(batch, expected)
    assert sorted(ids[:3].ravel()) == sorted(ids[3:].ravel()) == list(range(24))
    test = np.rint(without["test"] * 255).astype(np.uint8).reshape(-1, 32, 32, 3)
    np.testing.assert_array_equal(np.sort(test[:, 0, 0, 0]), np.arange(8))
    np.testing.assert_array_equal(test, images["test"][test[:, 0, 0, 0]])
