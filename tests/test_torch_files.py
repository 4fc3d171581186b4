"""Reading torch.save files without torch: both formats, every dtype, strides, and refusal of code."""
import collections
import os
import pathlib
import zipfile

import ml_dtypes
import numpy as np
import pytest

from ncsn_jax.official.torch_files import load_torch_file

DATA = pathlib.Path(__file__).parent / "data"
FORMATS = ("zip", "legacy")


def checkpoint_path(fmt: str) -> pathlib.Path:
    return DATA / f"torch_checkpoint_{fmt}.pth"


def flatten_arrays(tree, path=""):
    """{'0/0.weight': array, ...}: the array leaves keyed as in torch_checkpoint_expected.npz."""
    if isinstance(tree, np.ndarray):
        return {path: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    flat = {}
    for key, value in items:
        flat.update(flatten_arrays(value, f"{path}/{key}" if path else str(key)))
    return flat


@pytest.mark.parametrize("fmt", FORMATS)
def test_arrays_match_what_torch_saved(fmt):
    expected = np.load(DATA / "torch_checkpoint_expected.npz")
    arrays = flatten_arrays(load_torch_file(checkpoint_path(fmt)))
    assert sorted(arrays) == sorted(expected.files)
    for key in expected.files:
        # The .npz holds bfloat16 as float32 and uint16 as int64 (NumPy files have no bfloat16).
        np.testing.assert_array_equal(arrays[key].astype(expected[key].dtype), expected[key], err_msg=key)
        assert arrays[key].shape == expected[key].shape, key
    dtypes = {k.split("/")[-1]: v.dtype for k, v in arrays.items() if k.startswith("5/dtypes/")}
    assert dtypes["bfloat16"] == ml_dtypes.bfloat16
    assert dtypes["uint16"] == np.uint16  # saved through torch's untyped-storage path (_rebuild_tensor_v3)
    for name in ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool",
                 "complex64"):
        assert dtypes[name] == np.dtype(name), name


@pytest.mark.parametrize("fmt", FORMATS)
def test_views_of_one_storage_become_independent_arrays(fmt):
    tensors = load_torch_file(checkpoint_path(fmt))[5]["dtypes"]
    base = np.arange(24, dtype=np.float32).reshape(4, 6)  # what the three views were cut from
    np.testing.assert_array_equal(tensors["transposed"], base.T)
    np.testing.assert_array_equal(tensors["sliced"], base[1:, ::2])
    np.testing.assert_array_equal(tensors["shared_row"], base[2])
    assert tensors["transposed"].flags.c_contiguous and tensors["transposed"].flags.owndata
    tensors["shared_row"][:] = -1
    assert tensors["sliced"][1, 0] == 12


@pytest.mark.parametrize("fmt", FORMATS)
def test_checkpoint_structure_survives(fmt):
    model, optimizer, epoch, step, ema, extras = load_torch_file(checkpoint_path(fmt))
    assert isinstance(model, collections.OrderedDict)
    assert list(model) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                           "1.num_batches_tracked"]
    assert model["1.num_batches_tracked"].dtype == np.int64 and model["1.num_batches_tracked"] == 1
    assert (epoch, step) == (3, 1000)
    assert sorted(ema) == sorted(model)
    assert sorted(optimizer["state"]) == [0, 1, 2, 3]
    assert set(optimizer["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    group = optimizer["param_groups"][0]
    assert group["betas"] == (0.9, 0.999) and group["lr"] == 1e-3 and group["params"] == [0, 1, 2, 3]
    assert group["amsgrad"] is False and group["foreach"] is None
    assert extras["nested"] == [1, 2.5, "three", (4, None), {"flag": True, "ids": {7, 8}}]


# `os.system("touch <marker>")`, pickled by hand (protocol 0): GLOBAL, MARK, STRING, TUPLE, REDUCE.
def malicious_pickle(marker: pathlib.Path) -> bytes:
    return f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_global_outside_the_allowlist_is_refused_without_running_it(tmp_path, fmt):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("evil/data.pkl", malicious_pickle(marker))
    else:
        path.write_bytes(malicious_pickle(marker))
    with pytest.raises(ValueError, match=r"os\.system"):
        load_torch_file(path)
    assert not marker.exists()


@pytest.mark.parametrize("fmt, keep", [("zip", 0.5), ("legacy", 0.3), ("legacy", -5)])
def test_a_truncated_file_is_reported_as_damaged(tmp_path, fmt, keep):
    data = checkpoint_path(fmt).read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[:int(len(data) * keep)] if keep > 0 else data[:keep])
    with pytest.raises(ValueError, match="damaged"):
        load_torch_file(path)


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_torch_file(os.fspath(tmp_path / "absent.pth"))
