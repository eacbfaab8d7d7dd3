"""A restricted unpickler for NVlabs StyleGAN2-ADA network pickles (TF1 and PyTorch) and for
``torch.save`` files (zip or legacy stream), e.g. state dicts (:mod:`.state_dict`).

NVlabs' own loaders execute the Python source embedded in these pickles (``build_module_src`` of
``dnnlib.tflib.network.Network``; ``module_src`` of ``torch_utils.persistence`` objects) and resolve
any global the pickle names. A pickle from the internet must never run code here, so this module:

* resolves only the handful of globals the two formats need (see ``ALLOWED_GLOBALS``) — each one is
  mapped to a local, inert stand-in (a stub class that only stores its state, or a function that
  only builds NumPy arrays). Any other global (``os.system``, ``builtins.eval``, ...) is refused
  with :class:`UnsafePickleError` *before* anything is called;
* never executes, compiles or imports embedded source code: it is kept only as its SHA-256 and
  length, for provenance;
* reads PyTorch tensor storages itself (the legacy ``torch.save`` stream, top level or as
  ``TypedStorage.__reduce__`` embeds it, and the zip format), so ``torch`` is not needed;
* accepts only numeric NumPy dtypes (no object arrays);
* bounds what a small file can make it allocate (:mod:`.limits`): each zip entry's declared size is
  checked before it is inflated (a ``data.pkl`` at most ``MAX_PICKLE_BYTES``; a storage exactly
  ``numel x itemsize``); a legacy storage must hold the element count its reference declared and
  its bytes must be in the file before they are read; all storages and tensors of one load total
  at most ``MAX_ARRAY_BYTES``;
* gives every load fresh stand-ins (:class:`_LoadContext`): a pickle's BUILD opcode can set
  attributes only on objects of its own load (and BUILD on a stand-in global is refused), so
  nothing it does survives into a later load in the same process. A load may allow fewer globals
  than :data:`ALLOWED_GLOBALS` (a state dict needs only ``STATE_DICT_GLOBALS``).

Format facts (read from NVlabs/stylegan2-ada ``dnnlib/tflib/network.py`` and
NVlabs/stylegan2-ada-pytorch ``torch_utils/persistence.py``, ``training/training_loop.py`` and
PyTorch's ``torch/storage.py``, ``torch/serialization.py``):

* TF1: ``pickle.dump((G, D, Gs), f)``; each ``Network`` pickles as NEWOBJ of
  ``dnnlib.tflib.network.Network`` + BUILD with a state dict ``{version, name, static_kwargs,
  components, build_module_src, build_func_name, variables: [(name, ndarray)], input_shapes, ...}``.
* PyTorch: ``pickle.dump(dict(G=..., D=..., G_ema=..., augment_pipe=..., training_set_kwargs=...))``;
  each persistent module pickles as ``torch_utils.persistence._reconstruct_persistent_obj(meta)``
  with ``meta = {type, version, module_src, class_name, state}`` where ``state`` is the module's
  ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``, ``_init_kwargs``, ...). Tensors pickle as
  ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, meta])``
  (parameters wrapped in ``torch._utils._rebuild_parameter``), and each storage as
  ``torch.storage._load_from_bytes(b)`` where ``b`` is a complete legacy ``torch.save`` stream.
"""
from __future__ import annotations

import collections
import functools
import hashlib
import io
import math
import pickle
import struct
import zipfile

import numpy as np

from histaug_tf.torchfile import limits

__all__ = [
    "UnsafePickleError", "TFNetworkStub", "PersistentObjectStub", "EasyDictStub",
    "safe_load", "safe_loads", "load_torch_file", "ALLOWED_GLOBALS", "STATE_DICT_GLOBALS",
]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle needs something this loader refuses (a disallowed global, object arrays, ...)."""


# --------------------------------------------------------------------------------------------
# Inert stand-ins for the classes the formats name.


class TFNetworkStub:
    """Stand-in for ``dnnlib.tflib.network.Network``: stores the pickled state, runs nothing.

    Attributes: ``version``, ``name``, ``static_kwargs`` (dict), ``components`` (dict name ->
    TFNetworkStub), ``build_func_name``, ``variables`` (list of (name, ndarray)),
    ``module_src_sha256`` / ``module_src_len`` (the embedded ``build_module_src``, never executed).
    """

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise UnsafePickleError("dnnlib.tflib.network.Network state is not a dict")
        self.version = state.get("version")
        self.name = state.get("name")
        # kept as pickled (types are checked by the reader, in one line naming the file)
        self.static_kwargs = state.get("static_kwargs") or {}
        self.components = state.get("components") or {}
        self.build_func_name = state.get("build_func_name")
        src = state.get("build_module_src")
        self.module_src_sha256, self.module_src_len = _src_digest(src)
        self.variables = state.get("variables") or []
        self.input_shapes = state.get("input_shapes")
        self.output_shapes = state.get("output_shapes")

    def __repr__(self):
        return f"TFNetworkStub(name={getattr(self, 'name', None)!r})"


class PersistentObjectStub:
    """Stand-in for an object rebuilt by ``torch_utils.persistence._reconstruct_persistent_obj``.

    Attributes: ``class_name``, ``version``, ``state`` (the module's pickled ``__dict__``),
    ``module_src_sha256`` / ``module_src_len`` (the embedded module source, never executed).
    """

    def __init__(self, meta):
        if not isinstance(meta, dict):
            raise UnsafePickleError("torch_utils.persistence object: meta is not a dict")
        if meta.get("type") != "class":
            raise UnsafePickleError(
                f"torch_utils.persistence object of type {meta.get('type')!r} is not supported")
        self.class_name = meta.get("class_name")
        if not isinstance(self.class_name, str):
            raise UnsafePickleError("torch_utils.persistence object without a class name")
        self.version = meta.get("version")
        self.module_src_sha256, self.module_src_len = _src_digest(meta.get("module_src"))
        state = meta.get("state")
        self.state = dict(state) if state is not None else {}

    def __setstate__(self, state):  # the real format never BUILDs a persistent object
        raise UnsafePickleError("unexpected state for a torch_utils.persistence object")

    def __repr__(self):
        return f"PersistentObjectStub({self.class_name})"


class EasyDictStub(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access): a plain dict here."""

    def __setstate__(self, state):  # an EasyDict has no instance attributes of its own
        pass


def _src_digest(src):
    if src is None:
        return None, 0
    if isinstance(src, str):
        src = src.encode("utf-8", "surrogatepass")
    if not isinstance(src, (bytes, bytearray)):
        raise UnsafePickleError("embedded module source is not text")
    return hashlib.sha256(src).hexdigest(), len(src)


# --------------------------------------------------------------------------------------------
# NumPy reconstruction (TF1 pickles, NumPy scalars in PyTorch module attributes).

_NUMERIC_KINDS = set("biufc")


def _check_dtype(dt):
    if not isinstance(dt, np.dtype) or dt.kind not in _NUMERIC_KINDS or dt.hasobject \
            or dt.fields is not None or dt.subdtype is not None:
        raise UnsafePickleError(f"only numeric NumPy dtypes are allowed, got {dt!r}")
    return dt


def _np_dtype(obj, align=False, copy=False):
    if not isinstance(obj, (str, bytes)):
        raise UnsafePickleError(f"numpy.dtype({obj!r}) is not allowed")
    spec = obj.decode("ascii") if isinstance(obj, bytes) else obj
    if len(spec) > 8 or not spec.replace("<", "").replace(">", "").replace("=", "").isalnum():
        raise UnsafePickleError(f"numpy.dtype({obj!r}) is not allowed")
    return _check_dtype(np.dtype(spec, bool(align), bool(copy)))


def _np_reconstruct(subtype, shape, typecode, *, ctx=None):
    if ctx is None or subtype is not ctx.ndarray:
        raise UnsafePickleError("numpy _reconstruct of a class other than numpy.ndarray")
    if not isinstance(typecode, (bytes, str)) or len(typecode) != 1 or tuple(shape) != (0,):
        raise UnsafePickleError("numpy _reconstruct with unexpected arguments")
    arr = np.ndarray.__new__(np.ndarray, tuple(shape), np.dtype(typecode))
    return _ArrayUnderConstruction(arr)


class _NDArrayMarker:
    """What ``numpy.ndarray`` resolves to (one fresh instance per load): usable only as the first
    argument of _reconstruct."""

    __slots__ = ()

    def __setstate__(self, state):
        raise UnsafePickleError("BUILD of numpy.ndarray (the class) is not allowed")


class _ArrayUnderConstruction:
    """Receives ``ndarray.__setstate__`` (BUILD) with checked dtype, then is swapped for the array."""

    __slots__ = ("array",)

    def __init__(self, arr):
        self.array = arr

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError("unexpected ndarray state")
        dt = state[-3]
        _check_dtype(dt)
        raw = state[-1]
        if not isinstance(raw, (bytes, bytearray)):
            raise UnsafePickleError("ndarray data is not raw bytes (object arrays are refused)")
        self.array.__setstate__(state)


def _np_scalar(dtype, data=None):
    _check_dtype(dtype)
    if isinstance(data, str):  # protocol 0/1 writes the bytes latin-1 decoded
        data = data.encode("latin1")
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        raise UnsafePickleError("malformed numpy scalar")
    return np.frombuffer(bytes(data), dtype=dtype)[0]


def _codecs_encode(text, encoding="utf-8"):
    # Protocol 2 pickles bytes as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode is allowed only as protocol 2's bytes encoding")
    return text.encode("latin1")


# --------------------------------------------------------------------------------------------
# PyTorch tensors and storages, read without torch.

# storage class name -> (numpy dtype, is bfloat16)
_TORCH_STORAGES = {
    "FloatStorage": ("<f4", False), "DoubleStorage": ("<f8", False), "HalfStorage": ("<f2", False),
    "BFloat16Storage": ("<u2", True), "LongStorage": ("<i8", False), "IntStorage": ("<i4", False),
    "ShortStorage": ("<i2", False), "CharStorage": ("i1", False), "ByteStorage": ("u1", False),
    "BoolStorage": ("?", False),
}


class _StorageType:
    """What ``torch.<X>Storage`` resolves to (one fresh instance per load; BUILD refused)."""

    __slots__ = ("name", "dtype", "bfloat16")

    def __init__(self, name):
        self.name = name
        self.dtype, self.bfloat16 = _TORCH_STORAGES[name]

    def __setstate__(self, state):
        raise UnsafePickleError(f"BUILD of torch.{self.name} (a storage type) is not allowed")


class _Inert:
    """What an allowed function resolves to (one fresh instance per load): callable, holds no
    state a pickle can change (no ``__dict__``; BUILD refused)."""

    __slots__ = ("_fn", "_name")

    def __init__(self, fn, name):
        self._fn, self._name = fn, name

    def __call__(self, *args):
        return self._fn(*args)

    def __setstate__(self, state):
        raise UnsafePickleError(f"BUILD of the global {self._name} is not allowed")


_NVLABS_REFUSAL = ("refusing to load global '{}': not one of the names NVlabs network pickles use "
                   "(nothing in the pickle was executed)")


class _LoadContext:
    """Everything one load may touch: fresh stand-ins for the allowed globals (all of
    :data:`ALLOWED_GLOBALS`, or the keys ``allowed``), the byte budget of materialised arrays
    (:data:`limits.MAX_ARRAY_BYTES`), and the message that refuses any other global
    (``refusal.format('module.name')``)."""

    def __init__(self, allowed=None, refusal=_NVLABS_REFUSAL):
        self.array_bytes = 0
        self.refusal = refusal
        self.pending = None  # the _PendingTensors of the legacy stream being read
        self.ndarray = _NDArrayMarker()
        self.globals = {}
        for key, obj in ALLOWED_GLOBALS.items():
            if allowed is not None and key not in allowed:
                continue
            name = ".".join(key)
            if obj is _NDArrayMarker:
                fresh = self.ndarray
            elif isinstance(obj, _StorageType):
                fresh = _StorageType(obj.name)
            elif obj in (set, frozenset):
                fresh = obj  # builtin types: immutable
            elif isinstance(obj, type):  # NEWOBJ needs a class: a subclass private to this load
                fresh = type(obj.__name__, (obj,), {"__module__": obj.__module__,
                                                    "__qualname__": obj.__qualname__})
            elif obj in _NEEDS_CTX:
                fresh = _Inert(functools.partial(obj, ctx=self), name)
            else:
                fresh = _Inert(obj, name)
            self.globals[key] = fresh

    def charge(self, nbytes, what):
        """Account ``nbytes`` of array data about to be allocated; refuse past the cap."""
        if nbytes < 0:
            raise UnsafePickleError(f"{what}: negative size")
        self.array_bytes += nbytes
        if self.array_bytes > limits.MAX_ARRAY_BYTES:
            raise limits.LimitError(
                f"{what} would bring the array data read to {self.array_bytes} bytes, more than "
                f"{limits.MAX_ARRAY_BYTES} (limit MAX_ARRAY_BYTES={limits.MAX_ARRAY_BYTES})")


class _Storage:
    """A storage read from the file: a flat NumPy array (bfloat16 kept as its uint16 bits).

    In a legacy stream the storages' bytes follow the pickle that refers to them: such a storage
    is *pending* (``data`` is None) while that pickle is read, and its tensors are filled in when
    the bytes are (:class:`_PendingTensors`); ``numel`` and ``dtype`` are what its reference
    declared."""

    def __init__(self, data, bfloat16, numel=None, dtype=None):
        self.data = data
        self.bfloat16 = bfloat16
        self.numel = data.size if numel is None else numel
        self.dtype = data.dtype if dtype is None else np.dtype(dtype)


def _storage_from_persistent_id(pid, read_bytes):
    if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
        raise UnsafePickleError(f"unexpected persistent id {limits.short_repr(pid)}")
    stype, key, _location, numel = pid[1:5]
    view = pid[5] if len(pid) > 5 else None
    if not isinstance(stype, _StorageType) or not isinstance(key, str) \
            or not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
        raise UnsafePickleError("malformed storage reference")
    storage = read_bytes(key, stype, numel)
    if view is not None:
        if storage.data is None:  # torch >= 0.4 never writes views (its is_view is always False)
            raise UnsafePickleError("storage views in a legacy torch.save stream are not supported")
        _vkey, offset, size = view
        storage = _Storage(storage.data[offset:offset + size], stype.bfloat16)
    return storage


def _load_storage_from_bytes(payload, *, ctx=None):
    """``torch.storage._load_from_bytes``: parse the embedded ``torch.save`` stream into a _Storage."""
    ctx = ctx or _LoadContext()
    if not isinstance(payload, (bytes, bytearray)):
        raise UnsafePickleError("torch.storage._load_from_bytes of non-bytes")
    payload = bytes(payload)
    if payload[:4] == b"PK\x03\x04":
        obj = _load_torch_zip(io.BytesIO(payload), ctx)
    else:
        obj = _load_torch_legacy(io.BytesIO(payload), ctx)
    if not isinstance(obj, _Storage):
        raise UnsafePickleError("embedded torch.save stream does not hold a single storage")
    return obj


_TORCH_MAGIC = 0x1950A86A20F9469CFC6C


class _PendingTensors:
    """Tensors of pending storages (legacy stream): each allocated (and charged) when rebuilt,
    filled when its storage's bytes are read; a storage never read leaves the load refused."""

    def __init__(self):
        self.by_storage = collections.defaultdict(list)

    def add(self, storage, out, offset, size, stride):
        self.by_storage[id(storage)].append((out, offset, size, stride))

    def fill(self, storage):
        for out, offset, size, stride in self.by_storage.pop(id(storage), ()):
            out[...] = _strided_copy(storage, offset, size, stride)


def _load_torch_legacy(f, ctx):
    """The legacy (non-zip) ``torch.save`` stream: magic, protocol, sys_info, object, keys, data.

    Returns the object, its tensors as NumPy arrays (storages as :class:`_Storage`)."""
    magic = _Unpickler(f, ctx).load()
    if magic != _TORCH_MAGIC:
        raise UnsafePickleError("not a torch.save stream (neither a zip archive nor the legacy "
                                "magic number)")
    proto = _Unpickler(f, ctx).load()
    if proto != 1001:
        raise UnsafePickleError(f"unsupported torch.save protocol {limits.short_repr(proto)}")
    sys_info = _Unpickler(f, ctx).load()
    little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    storages = {}  # key -> pending _Storage (one per key, as torch shares them)
    pos = f.tell()
    end = f.seek(0, io.SEEK_END)
    f.seek(pos)

    def pending(key, stype, numel):
        st = storages.get(key)
        if st is None:
            nbytes = numel * np.dtype(stype.dtype).itemsize
            left = end - f.tell()  # (at least what is left: the unpickler may have read ahead)
            if nbytes > left:  # its bytes follow in this stream: refused before tensors of it
                raise UnsafePickleError(  # are allocated
                    f"torch storage {limits.short_repr(key)} declares {numel} x "
                    f"{np.dtype(stype.dtype).itemsize} = {nbytes} bytes, more than the {left} "
                    "bytes left in the stream")
            st = storages[key] = _Storage(None, stype.bfloat16, numel, stype.dtype)
        elif st.numel != numel or st.dtype != np.dtype(stype.dtype):
            raise UnsafePickleError(f"torch storage {limits.short_repr(key)} referenced with two "
                                    "sizes or types")
        return st

    outer, ctx.pending = ctx.pending, _PendingTensors()  # (a stream may embed another)
    try:
        obj = _Unpickler(f, ctx, persistent_load=lambda pid: _storage_from_persistent_id(
            pid, pending)).load()
        keys = _Unpickler(f, ctx).load()
        if not isinstance(keys, list):
            raise UnsafePickleError("malformed torch.save stream (storage key list)")
        for key in keys:
            st = storages.get(key) if isinstance(key, str) else None
            if st is None:
                raise UnsafePickleError("torch storage without a reference")
            if st.data is not None:
                raise UnsafePickleError(f"torch storage {limits.short_repr(key)} stored twice")
            head = f.read(8)
            if len(head) != 8:
                raise UnsafePickleError("truncated torch storage")
            (numel,) = struct.unpack("<q" if little else ">q", head)
            if numel != st.numel:  # as torch: the bytes must be the storage its reference declared
                raise UnsafePickleError(
                    f"torch storage {limits.short_repr(key)} holds {numel} elements, its reference "
                    f"declares {st.numel}")
            dt = st.dtype.newbyteorder("<" if little else ">")
            nbytes = numel * dt.itemsize
            ctx.charge(nbytes, f"torch storage {limits.short_repr(key)}")
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise UnsafePickleError("truncated torch storage")
            st.data = np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="))
            ctx.pending.fill(st)
        missing = [k for k, st in storages.items() if st.data is None]
        if missing:
            raise UnsafePickleError(f"torch storage {limits.short_repr(missing[0])} missing")
    finally:
        ctx.pending = outer
    return obj


def _read_entry(zf, info, nbytes):
    """Exactly ``nbytes`` of a zip entry whose declared size was checked to be ``nbytes``.

    ``zipfile`` never inflates past the declared size (and checks the CRC at the end), so a lying
    header cannot make this read more."""
    with zf.open(info) as e:
        raw = e.read(nbytes)
        if len(raw) != nbytes or e.read(1):
            raise UnsafePickleError(f"zip entry {info.filename!r} is not {nbytes} bytes long")
    return raw


def _load_torch_zip(f, ctx):
    """The zip ``torch.save`` format: ``<root>/data.pkl`` + ``<root>/data/<key>`` raw storages."""
    try:
        zf = zipfile.ZipFile(f)
    except zipfile.BadZipFile as e:
        raise UnsafePickleError(f"bad torch zip archive: {e}") from None
    with zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise UnsafePickleError("torch zip archive without a single data.pkl")
        root = pkl[0][: -len("data.pkl")]
        little = True
        if f"{root}byteorder" in names:
            info = zf.getinfo(f"{root}byteorder")
            if info.file_size > 16:
                raise UnsafePickleError(f"zip entry {info.filename!r} is {info.file_size} bytes")
            little = _read_entry(zf, info, info.file_size).strip() != b"big"

        storages = {}  # key -> _Storage (one per key, as torch shares them)

        def read_now(key, stype, numel):
            st = storages.get(key)
            if st is not None:
                if st.numel != numel or st.dtype != np.dtype(stype.dtype).newbyteorder("="):
                    raise UnsafePickleError(f"torch storage {limits.short_repr(key)} referenced "
                                            "with two sizes or types")
                return st
            name = f"{root}data/{key}"
            try:
                info = zf.getinfo(name)
            except KeyError:
                raise UnsafePickleError(f"torch storage {name!r} missing from the zip") from None
            dt = np.dtype(stype.dtype).newbyteorder("<" if little else ">")
            nbytes = numel * dt.itemsize
            if info.file_size != nbytes:  # checked before anything is inflated
                raise limits.LimitError(
                    f"zip entry {name!r} declares {info.file_size} bytes, but its storage holds "
                    f"{numel} x {dt.itemsize} = {nbytes} bytes (limit: entry size = numel x "
                    "itemsize)")
            ctx.charge(nbytes, f"zip entry {name!r}")
            raw = _read_entry(zf, info, nbytes)
            st = storages[key] = _Storage(np.frombuffer(raw, dtype=dt).astype(
                dt.newbyteorder("=")), stype.bfloat16)
            return st

        info = zf.getinfo(pkl[0])
        if info.file_size > limits.MAX_PICKLE_BYTES:
            raise limits.LimitError(
                f"zip entry {info.filename!r} declares {info.file_size} bytes, more than "
                f"{limits.MAX_PICKLE_BYTES} (limit MAX_PICKLE_BYTES={limits.MAX_PICKLE_BYTES})")
        data = _read_entry(zf, info, info.file_size)
        return _Unpickler(io.BytesIO(data), ctx, persistent_load=lambda pid:
                          _storage_from_persistent_id(pid, read_now)).load()


def _bf16_to_f32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _strided_copy(storage, offset, size, stride):
    """A copy of the tensor ``(offset, size, stride)`` of a read storage (bfloat16 -> float32)."""
    data = storage.data
    view = np.lib.stride_tricks.as_strided(
        data[offset:], shape=size, strides=tuple(st * data.itemsize for st in stride),
        writeable=False)
    out = np.array(view, copy=True)
    return _bf16_to_f32(out) if storage.bfloat16 else out


def _rebuild_tensor(storage, storage_offset, size, stride, *, ctx=None):
    ctx = ctx or _LoadContext()
    if not isinstance(storage, _Storage):
        raise UnsafePickleError("tensor rebuilt from something that is not a storage")
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    storage_offset = int(storage_offset)
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise UnsafePickleError("malformed tensor size/stride")
    out_dtype = np.dtype(np.float32) if storage.bfloat16 else storage.dtype
    n = math.prod(size)  # Python ints: no int64 wrap-around on hostile sizes
    if n == 0:
        return np.zeros(size, dtype=out_dtype)
    # checked against the declared numel (the data of a pending storage is not read yet)
    last = storage_offset + sum((s - 1) * st for s, st in zip(size, stride))
    if storage_offset < 0 or last >= storage.numel:
        raise UnsafePickleError("tensor extends beyond its storage")
    if n > storage.numel:  # only expanded/overlapping views could; network tensors never are
        raise UnsafePickleError("tensor has more elements than its storage")
    ctx.charge(n * storage.dtype.itemsize * (2 if storage.bfloat16 else 1), "a tensor copy")
    if storage.data is not None:
        return _strided_copy(storage, storage_offset, size, stride)
    if ctx.pending is None:
        raise UnsafePickleError("tensor of a storage that is never read")
    out = np.empty(size, dtype=out_dtype)  # charged above; filled when the storage is read
    ctx.pending.add(storage, out, storage_offset, size, stride)
    return out


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None, *, ctx=None):
    if metadata and any(bool(v) for v in dict(metadata).values()):
        raise UnsafePickleError(f"tensor metadata {limits.short_repr(metadata)} (conj/neg views) "
                                "is not supported")
    return _rebuild_tensor(storage, storage_offset, size, stride, ctx=ctx)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, np.ndarray):
        raise UnsafePickleError("parameter rebuilt from something that is not a tensor")
    return data


def _reconstruct_persistent_obj(meta):
    return PersistentObjectStub(meta)


def _ordered_dict(*args):
    if args and not (len(args) == 1 and isinstance(args[0], (list, tuple, dict))):
        raise UnsafePickleError("unexpected collections.OrderedDict arguments")
    return collections.OrderedDict(*args)


# (module, name) -> the local stand-in. Nothing else is ever resolved.
ALLOWED_GLOBALS = {
    ("dnnlib.tflib.network", "Network"): TFNetworkStub,
    ("dnnlib.util", "EasyDict"): EasyDictStub,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("collections", "OrderedDict"): _ordered_dict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "ndarray"): _NDArrayMarker,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
}
for _name in _TORCH_STORAGES:
    ALLOWED_GLOBALS[("torch", _name)] = _StorageType(_name)
# Python 2-era names that protocol 2 maps to (fix_imports) and that mean the same harmless thing.
ALLOWED_GLOBALS[("__builtin__", "set")] = set
ALLOWED_GLOBALS[("__builtin__", "frozenset")] = frozenset
# What a ``torch.save``'d state dict needs (an OrderedDict of tensors); nothing else is resolved.
STATE_DICT_GLOBALS = frozenset(
    [("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
     ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_parameter")]
    + [("torch", n) for n in _TORCH_STORAGES])
# These get the load's context (its byte budget, its numpy.ndarray marker).
_NEEDS_CTX = {_rebuild_tensor_v2, _rebuild_tensor, _load_storage_from_bytes, _np_reconstruct}


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, ctx, persistent_load=None):
        super().__init__(f, fix_imports=False, encoding="latin1")
        self._ctx = ctx
        self._persistent = persistent_load

    def find_class(self, module, name):
        obj = self._ctx.globals.get((module, name))
        if obj is None:
            raise UnsafePickleError(self._ctx.refusal.format(f"{module}.{name}"))
        return obj

    def persistent_load(self, pid):
        if self._persistent is None:
            raise UnsafePickleError("unexpected persistent id in a pickle.dump stream")
        return self._persistent(pid)


def _finalize(obj, seen=None):
    """Swap arrays under construction for the arrays; check every array is numeric."""
    if seen is None:
        seen = {}
    key = id(obj)
    if key in seen:
        return seen[key]
    if isinstance(obj, _ArrayUnderConstruction):
        out = obj.array
        _check_dtype(out.dtype)
        seen[key] = out
        return out
    if isinstance(obj, np.ndarray):
        _check_dtype(obj.dtype)
        return obj
    if isinstance(obj, dict):
        seen[key] = obj
        for k in list(obj.keys()):
            obj[k] = _finalize(obj[k], seen)
        return obj
    if isinstance(obj, list):
        seen[key] = obj
        obj[:] = [_finalize(v, seen) for v in obj]
        return obj
    if isinstance(obj, tuple):
        out = tuple(_finalize(v, seen) for v in obj)
        seen[key] = out
        return out
    if isinstance(obj, TFNetworkStub):
        seen[key] = obj
        obj.static_kwargs = _finalize(obj.static_kwargs, seen)
        obj.components = _finalize(obj.components, seen)
        obj.variables = _finalize(obj.variables, seen)
        return obj
    if isinstance(obj, PersistentObjectStub):
        seen[key] = obj
        obj.state = _finalize(obj.state, seen)
        return obj
    if isinstance(obj, _Storage):
        raise UnsafePickleError("a bare torch storage outside a tensor is not supported")
    return obj


def safe_load(f):
    """Unpickle an NVlabs network pickle from a binary file object, allowing only known globals.

    Raises :class:`UnsafePickleError` (a ``pickle.UnpicklingError``) naming the first refused
    global or construct. Embedded source code is never executed.
    """
    ctx = _LoadContext()  # fresh stand-ins and byte budget for this load only
    head = f.read(4)
    f.seek(-len(head), io.SEEK_CUR)
    if head == b"PK\x03\x04":  # a torch.save zip of the whole snapshot dict
        obj = _load_torch_zip(f, ctx)
    else:
        obj = _Unpickler(f, ctx).load()
    return _finalize(obj)


def safe_loads(data: bytes):
    """:func:`safe_load` from bytes."""
    return safe_load(io.BytesIO(data))


def load_torch_file(f, allowed, refusal):
    """The object of a ``torch.save`` file (zip or legacy stream) from the seekable binary file
    ``f``, resolving only the globals ``allowed`` (keys of :data:`ALLOWED_GLOBALS`); any other is
    refused with ``refusal.format('module.name')``. Tensors come back as NumPy arrays.

    Raises :class:`UnsafePickleError` or :class:`limits.LimitError` (messages without the file
    name: the caller adds it)."""
    ctx = _LoadContext(allowed, refusal)
    head = f.read(4)
    f.seek(-len(head), io.SEEK_CUR)
    if head == b"PK\x03\x04":
        return _load_torch_zip(f, ctx)
    return _load_torch_legacy(f, ctx)
