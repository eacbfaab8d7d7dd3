"""Read a PyTorch state dict file (``torch.save(model.state_dict(), f)``) into NumPy, without torch
and without running any code from the file.

The file is a pickle whose tensors refer to raw storages: in the zip format (torch >= 1.6) the
pickle is ``<root>/data.pkl`` and storage ``k`` is the raw little-endian file ``<root>/data/k``; in
the legacy format one stream holds pickles of a magic number, a protocol number (1001), system info,
the object, the list of storage keys, then every storage as an int64 element count + raw bytes.
Tensors pickle as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
hooks[, metadata])``; storages as persistent ids ``('storage', torch.<Type>Storage, key, location,
numel[, view])``; the dict as ``collections.OrderedDict`` (with a ``_metadata`` attribute).

The unpickler resolves exactly those globals — OrderedDict, the tensor rebuild functions (mapped to
local functions that only record shapes) and the storage type names (mapped to NumPy dtypes) — and
refuses any other global before anything is called, so a malicious file cannot run code.

``load_state_dict(path) -> {name: np.ndarray}``; problems raise ``UserError`` naming the file.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

from histaug_tf.common import UserError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "BFloat16Storage": "bfloat16",
}


class _Bad(Exception):
    """A malformed or refused file (turned into a ``UserError`` with the path)."""


class _StorageType:
    def __init__(self, name):
        self.name = name


class _StorageRef:
    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = key, dtype, numel


class _TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks, metadata
    if not isinstance(storage, _StorageRef):
        raise _Bad("a tensor without a storage")
    try:
        size = tuple(int(s) for s in size)
        stride = tuple(int(s) for s in stride)
        offset = int(storage_offset)
    except (TypeError, ValueError):
        raise _Bad("a tensor with a malformed size/stride") from None
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise _Bad("a tensor with a malformed size/stride")
    return _TensorRef(storage, offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    del requires_grad, backward_hooks, state
    return data


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, storages=None):
        super().__init__(f, encoding="utf-8")
        self._storages = storages

    def find_class(self, module, name):
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise _Bad(f"refusing to load global {module}.{name} (not part of a tensor state dict)")

    def persistent_load(self, pid):
        if self._storages is None:
            raise _Bad("unexpected persistent id")
        if (not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType)):
            raise _Bad(f"unsupported persistent id {str(pid)[:80]}")
        key, numel = str(pid[2]), int(pid[4])
        if key not in self._storages:
            self._storages[key] = _StorageRef(key, STORAGE_DTYPES[pid[1].name], numel)
        return self._storages[key]


def _to_array(raw: bytes, dtype, numel: int, key) -> np.ndarray:
    if dtype == "bfloat16":
        if len(raw) < 2 * numel:
            raise _Bad(f"storage {key} is truncated")
        bits = np.frombuffer(raw[:2 * numel], "<u2").astype(np.uint32) << 16
        return bits.view(np.float32)
    dt = np.dtype(dtype).newbyteorder("<")
    if numel < 0 or len(raw) < numel * dt.itemsize:
        raise _Bad(f"storage {key} is truncated")
    return np.frombuffer(raw[:numel * dt.itemsize], dt).astype(dt.newbyteorder("="))


def _materialize(ref: _TensorRef, data: dict) -> np.ndarray:
    flat = data[ref.storage.key]
    n = int(np.prod(ref.size)) if ref.size else 1
    if n:
        last = ref.offset + sum((s - 1) * st for s, st in zip(ref.size, ref.stride))
        if last >= flat.shape[0]:
            raise _Bad(f"a tensor reaches past the end of storage {ref.storage.key}")
    else:
        return np.zeros(ref.size, flat.dtype)
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset:], shape=ref.size,
        strides=tuple(s * flat.itemsize for s in ref.stride), writeable=False)
    return np.array(view)


def _read_zip(blob: bytes):
    try:
        zf = zipfile.ZipFile(io.BytesIO(blob))
    except zipfile.BadZipFile as e:
        raise _Bad(f"bad zip archive ({e})") from None
    with zf:
        names = zf.namelist()
        pkl = [n for n in names if n == "data.pkl" or
               (n.endswith("/data.pkl") and n.count("/") == 1)]
        if len(pkl) != 1:
            raise _Bad("not a torch.save zip archive (no single <root>/data.pkl)")
        root = pkl[0][:-len("data.pkl")]
        if f"{root}byteorder" in names and zf.read(f"{root}byteorder").strip() != b"little":
            raise _Bad("big-endian tensor data is not supported")
        storages = {}
        obj = _Unpickler(io.BytesIO(zf.read(pkl[0])), storages).load()
        data = {}
        for key, ref in storages.items():
            name = f"{root}data/{key}"
            if name not in names:
                raise _Bad(f"storage {name} is missing")
            data[key] = _to_array(zf.read(name), ref.dtype, ref.numel, key)
    return obj, data


def _read_legacy(blob: bytes):
    f = io.BytesIO(blob)
    if _Unpickler(f).load() != _LEGACY_MAGIC:
        raise _Bad("not a torch.save file (neither a zip archive nor the legacy magic number)")
    if _Unpickler(f).load() != _LEGACY_PROTOCOL:
        raise _Bad("unsupported legacy torch.save protocol")
    sys_info = _Unpickler(f).load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise _Bad("big-endian tensor data is not supported")
    storages = {}
    obj = _Unpickler(f, storages).load()
    keys = _Unpickler(f).load()
    if not isinstance(keys, list):
        raise _Bad("malformed storage key list")
    data = {}
    for key in keys:
        key = str(key)
        head = f.read(8)
        if len(head) != 8 or key not in storages:
            raise _Bad(f"storage {key} is missing or truncated")
        (numel,) = struct.unpack("<q", head)
        ref = storages[key]
        size = 2 if ref.dtype == "bfloat16" else np.dtype(ref.dtype).itemsize
        data[key] = _to_array(f.read(numel * size), ref.dtype, numel, key)
    return obj, data


def _resolve(obj, data):
    if not isinstance(obj, dict):
        raise _Bad(f"holds a {type(obj).__name__}, not a state dict")
    out = {}
    for k, v in obj.items():
        if not isinstance(k, str):
            raise _Bad("a state dict key is not a string")
        if isinstance(v, _TensorRef):
            if v.storage.key not in data:
                raise _Bad(f"storage {v.storage.key} is missing")
            out[k] = _materialize(v, data)
        elif isinstance(v, dict):  # e.g. {'state_dict': {...}}: flatten with a dotted prefix
            out.update({f"{k}.{kk}": vv for kk, vv in _resolve(v, data).items()})
        else:
            raise _Bad(f"entry {k!r} is a {type(v).__name__}, not a tensor")
    return out


def load_state_dict(path: str) -> dict:
    """``{name: np.ndarray}`` of a ``torch.save``'d state dict (zip or legacy format)."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        obj, data = _read_zip(blob) if blob[:4] == b"PK\x03\x04" else _read_legacy(blob)
        return _resolve(obj, data)
    except _Bad as e:
        raise UserError(f"{path}: not a PyTorch state dict: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, struct.error) as e:
        raise UserError(f"{path}: not a PyTorch state dict: {type(e).__name__}: {e}") from None
