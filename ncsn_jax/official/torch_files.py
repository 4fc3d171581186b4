"""Files written by `torch.save`, read with NumPy alone: no torch import and no arbitrary code.

Two container formats exist, and both are read:
  * zip (torch ≥ 1.6, the default since): `<archive>/data.pkl` holds the object tree and refers to each
    storage by key; the storage's raw bytes are the record `<archive>/data/<key>`.
  * legacy (earlier torch, or `_use_new_zipfile_serialization=False`): a stream of pickles (magic number,
    protocol version, system info, the object tree, the list of storage keys) followed by each storage as
    an int64 element count and its little-endian bytes. pytorch-fid's FID Inception weights
    (`pt_inception-2015-12-05-6726825d.pth`) were published in May 2019 (pytorch-fid PR #16), before
    torch 1.6 made zip the default, so they are expected in this format.

A pickle can call any importable function, so the object tree is unpickled with a closed list of globals:
the container types, torch's tensor-rebuilding functions (replaced here by NumPy equivalents) and the
storage and dtype names. Anything else, such as a whole pickled `nn.Module` or `os.system`, is refused.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Callable

import ml_dtypes
import numpy as np

_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001

# Storage element types as pickled by torch (`torch.FloatStorage`, ...). `UntypedStorage` holds raw bytes;
# tensors on it (dtypes newer than the typed storages, e.g. uint16) carry their dtype separately.
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128,
}
# `torch.<dtype>` globals: the dtype argument of `_rebuild_tensor_v3`, or a dtype stored as a value.
_TORCH_DTYPES = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint64": np.uint64,
    "uint32": np.uint32,
    "uint16": np.uint16,
    "uint8": np.uint8,
    "bool": np.bool_,
    "complex64": np.complex64,
    "complex128": np.complex128,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
}


class _DamagedFile(Exception):
    """Internal: the bytes contradict the format; `load_torch_file` reports it as a ValueError."""


def _strided_copy(storage: np.ndarray | None, offset: int, size: tuple[int, ...],
                  stride: tuple[int, ...]) -> np.ndarray | None:
    """The tensor `storage[offset + Σ index·stride]` of shape `size`, as a C-contiguous copy.

    `storage` is None only in the first pass over a legacy file, which learns the storages' dtypes before
    their bytes are read (see `_load_legacy`).
    """
    if storage is None:
        return None
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or min((offset, *size, *stride), default=0) < 0:
        raise _DamagedFile(f"tensor with size {size}, stride {stride}, offset {offset}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise _DamagedFile(f"a tensor reaches element {last} of a storage of {storage.size} elements")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride], writeable=False)
    # A copy, so that arrays which shared a torch storage do not alias each other.
    return np.array(view, order="C")


def _apply_metadata(array: np.ndarray | None, metadata: dict | None) -> np.ndarray | None:
    # torch marks lazily conjugated or negated views with these bits instead of changing their data.
    if array is None or not metadata:
        return array
    if metadata.get("conj"):
        array = np.conj(array)
    if metadata.get("neg"):
        array = -array
    return array


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _strided_copy(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       metadata=None):
    del requires_grad, backward_hooks  # autograd state; meaningless for arrays
    return _apply_metadata(_strided_copy(storage, storage_offset, size, stride), metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
    del requires_grad, backward_hooks
    if storage is None:
        return None
    # `storage` holds raw bytes here; offset and strides count elements of `dtype`.
    if storage.size % dtype.itemsize:
        raise _DamagedFile(f"a storage of {storage.size} bytes holds no whole number of {dtype}")
    return _apply_metadata(_strided_copy(storage.view(dtype), storage_offset, size, stride), metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    del requires_grad, backward_hooks
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    del requires_grad, backward_hooks, state  # Python attributes set on the nn.Parameter
    return data


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    }
    # Protocol-2 pickles name builtins `__builtin__` (Python 2 spelling), newer ones `builtins`.
    for module in ("builtins", "__builtin__"):
        allowed[(module, "set")] = set
        allowed[(module, "frozenset")] = frozenset
    for name, dtype in _STORAGE_DTYPES.items():
        allowed[("torch", name)] = np.dtype(dtype)
    allowed[("torch.storage", "UntypedStorage")] = np.dtype(np.uint8)  # pickled by its defining module
    for name, dtype in _TORCH_DTYPES.items():
        allowed[("torch", name)] = np.dtype(dtype)
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()

StorageReader = Callable[[str, np.dtype, int], np.ndarray | None]


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only checkpoint contents; tensors become NumPy arrays.

    Args:
      file: binary file positioned at the pickle.
      read_storage: `(key, dtype, numel) -> 1-D array` for the storage a tensor refers to, or None
        (legacy first pass); called once per key.
    """

    def __init__(self, file: io.BufferedIOBase, read_storage: StorageReader):
        super().__init__(file)
        self._read_storage = read_storage
        self._storages: dict[str, np.ndarray | None] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ValueError(
                f"refusing to load the global {module}.{name}: a checkpoint should hold only tensors, "
                "numbers, strings and containers, and unpickling other globals can run arbitrary code. "
                "If you trust the file, load it with torch.load and save its state_dict() instead."
            ) from None

    def persistent_load(self, pid: Any) -> np.ndarray | None:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise ValueError(f"unsupported persistent object {pid!r:.80}: only tensor storages are read")
        # zip: (tag, dtype, key, location, numel); legacy: the same plus view metadata.
        dtype, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(dtype, np.dtype):
            raise _DamagedFile(f"storage {key!r} has no storage type")
        if len(pid) > 5 and pid[5] is not None:
            # Only early torch versions saved views of part of a storage; torch.save no longer does.
            raise ValueError("the file holds a storage view, which only early torch versions wrote; "
                             "load it with torch.load and save it again with a current torch")
        if key not in self._storages:
            self._storages[key] = self._read_storage(key, dtype, numel)
        return self._storages[key]


def _frombuffer(data: bytes, dtype: np.dtype, numel: int, where: str) -> np.ndarray:
    if len(data) < numel * dtype.itemsize:
        raise _DamagedFile(f"{where} has {len(data)} bytes, expected {numel * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype, count=numel)


def _load_zip(file: io.BufferedIOBase) -> Any:
    with zipfile.ZipFile(file) as archive:
        pickles = [n for n in archive.namelist() if n.split("/")[-1] == "data.pkl" and n.count("/") <= 1]
        if len(pickles) != 1:
            raise _DamagedFile(f"expected one data.pkl record, found {pickles}")
        prefix = pickles[0][:-len("data.pkl")]
        if f"{prefix}byteorder" in archive.namelist():
            byteorder = archive.read(f"{prefix}byteorder").decode()
            if byteorder != "little":
                raise ValueError(f"the file was written on a {byteorder}-endian machine; only "
                                 "little-endian files are supported")

        def read_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            name = f"{prefix}data/{key}"
            return _frombuffer(archive.read(name), dtype, numel, f"storage record {name}")

        with archive.open(pickles[0]) as data_pkl:
            return _RestrictedUnpickler(data_pkl, read_storage).load()


def _load_legacy(file: io.BufferedIOBase) -> Any:
    def no_storage(key: str, dtype: np.dtype, numel: int) -> None:
        raise _DamagedFile(f"a header pickle refers to storage {key!r}")

    if _RestrictedUnpickler(file, no_storage).load() != _LEGACY_MAGIC_NUMBER:
        raise ValueError("not a file written by torch.save (neither a zip archive nor the legacy format's "
                         "magic number)")
    version = _RestrictedUnpickler(file, no_storage).load()
    if version != _LEGACY_PROTOCOL_VERSION:
        raise ValueError(f"unsupported legacy torch.save protocol version {version!r}")
    _RestrictedUnpickler(file, no_storage).load()  # system info; legacy storages are always little-endian
    tree_start = file.tell()

    # The storages' bytes follow the object tree, and their element sizes are known only from the tree:
    # a first pass over it learns the dtypes, a second one builds the arrays.
    dtypes: dict[str, np.dtype] = {}

    def learn_dtype(key: str, dtype: np.dtype, numel: int) -> None:
        dtypes[key] = dtype

    _RestrictedUnpickler(file, learn_dtype).load()
    storages: dict[str, np.ndarray] = {}
    for key in _RestrictedUnpickler(file, no_storage).load():
        if key not in dtypes:
            raise _DamagedFile(f"storage {key!r} is listed but no tensor uses it")
        (numel,) = struct.unpack("<q", file.read(8))
        if numel < 0:
            raise _DamagedFile(f"storage {key!r} has {numel} elements")
        dtype = dtypes[key]
        storages[key] = _frombuffer(file.read(numel * dtype.itemsize), dtype, numel, f"storage {key!r}")

    def stored(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        if key not in storages:
            raise _DamagedFile(f"storage {key!r} is missing")
        return storages[key]

    file.seek(tree_start)
    return _RestrictedUnpickler(file, stored).load()


def load_torch_file(path: str | os.PathLike) -> Any:
    """Reads a file written by `torch.save` without torch, tensors as NumPy arrays.

    Containers come back as they were saved (dict, OrderedDict, list, tuple, set) and so do ints, floats,
    strings, bools and None; e.g. an official NCSNv2 checkpoint is the list
    `[model_state_dict, optimizer_state_dict, epoch, step, ema_state_dict]`. Each tensor becomes a
    C-contiguous array of the same shape and dtype (bfloat16 and float8 as `ml_dtypes` types; a
    `torch.float32` value as `np.dtype('float32')`), copied out of its storage, so arrays never alias.

    Args:
      path: a `.pth`/`.pt` file in torch's zip format (torch ≥ 1.6) or its legacy format.

    Returns:
      The saved object with NumPy arrays in place of tensors.

    Raises:
      FileNotFoundError: `path` does not exist.
      ValueError: the file is damaged (truncated or corrupt), is not a torch.save file, or refers to a
        Python global other than containers, tensors and dtypes (a pickled module, or code).
    """
    with open(path, "rb") as file:
        is_zip = file.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
        file.seek(0)
        try:
            return _load_zip(file) if is_zip else _load_legacy(file)
        # What a truncated or corrupt file raises varies with where it breaks.
        except (_DamagedFile, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, struct.error,
                KeyError, IndexError, TypeError, AttributeError) as e:
            detail = str(e) if isinstance(e, _DamagedFile) else f"{type(e).__name__}: {e}"
            raise ValueError(f"{os.fspath(path)} is damaged (truncated or corrupt): {detail}. "
                             "Copy or download it again.") from e
