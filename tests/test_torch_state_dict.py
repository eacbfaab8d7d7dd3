"""torchfile.load_state_dict (the FID Inception weights reader) on valid and hostile files, all
written here (pickle opcodes via tests/test_import_fixtures.py's writer; no torch).

Valid files are checked against the NumPy arrays they were written from. A hostile file must give
one ``UserError`` line naming the file, and — where a small file could make the reader allocate a
lot — stay within a small allocation peak. The peak is measured with ``tracemalloc``, which sees
every Python and NumPy allocation at the moment it is made (also the untouched ``np.empty`` /
read buffers that peak RSS would not show)."""
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from histaug_tf.common import UserError
from histaug_tf.torchfile import limits
from histaug_tf.torchfile.state_dict import load_state_dict

import test_import_fixtures as fx

_STYPE = {"<f4": "FloatStorage", "<f8": "DoubleStorage", "<f2": "HalfStorage",
          "<i8": "LongStorage", "<i4": "IntStorage", "<i2": "ShortStorage", "|i1": "CharStorage",
          "|u1": "ByteStorage", "|b1": "BoolStorage", "bf16": "BFloat16Storage"}


class Storage:
    """A storage to write: ``raw`` bytes (little-endian), its type name and declared numel."""

    def __init__(self, key, arr=None, stype=None, numel=None, raw=None):
        if arr is not None:
            arr = np.asarray(arr).reshape(-1)
            stype = stype or _STYPE[arr.dtype.newbyteorder("<").str]
            raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes() if raw is None else raw
            numel = arr.size if numel is None else numel
        self.key, self.stype, self.numel, self.raw = key, stype, numel, raw


def tensor(storage, offset, size, stride):
    return fx.Reduce(fx.GlobalRef("torch._utils", "_rebuild_tensor_v2"),
                     (storage, offset, tuple(size), tuple(stride), False,
                      fx.Reduce(fx.GlobalRef("collections", "OrderedDict"), ())))


def whole(storage, shape):
    """A C-contiguous tensor over all of ``storage``."""
    strides = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]
    return tensor(storage, 0, shape, strides)


def _pickle(obj, legacy):
    def pid(o):
        if isinstance(o, Storage):
            return ("storage", fx.GlobalRef("torch", o.stype), o.key, "cpu", o.numel) + (
                (None,) if legacy else ())
        return None
    return fx.dumps(obj, protocol=2, persistent=pid)


def write_zip(path, obj, storages):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", _pickle(obj, legacy=False))
        z.writestr("archive/byteorder", "little")
        for s in storages:
            z.writestr(f"archive/data/{s.key}", s.raw)


def write_legacy(path, obj, storages, counts=None, keys=None):
    """``counts``: {key: element count written before the bytes} (default: the declared numel);
    ``keys``: the storage key list (default: every storage)."""
    import pickle

    with open(path, "wb") as f:
        for head in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            f.write(pickle.dumps(head, protocol=2))
        f.write(_pickle(obj, legacy=True))
        f.write(pickle.dumps([s.key for s in storages] if keys is None else keys, protocol=2))
        for s in storages:
            f.write(struct.pack("<q", (counts or {}).get(s.key, s.numel)) + s.raw)


def refused(path, *needles):
    """The one-line UserError of loading ``path``."""
    with pytest.raises(UserError) as e:
        load_state_dict(str(path))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def alloc_peak(fn):
    """(result or exception, peak bytes allocated while ``fn`` ran)."""
    tracemalloc.start()
    try:
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - returned to the caller
            out = e
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


WRITERS = {"zip": write_zip, "legacy": write_legacy}


# ---------------------------------------------------------------------------------------------
# Valid files.

@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_valid_state_dict_every_dtype_views_nesting_bfloat16(tmp_path, fmt):
    rng = np.random.default_rng(0)
    arrays = {"f32": rng.normal(size=(3, 4)).astype(np.float32), "f64": rng.normal(size=5),
              "f16": rng.normal(size=(2, 3)).astype(np.float16), "i64": np.array(7, np.int64),
              "i32": rng.integers(-9, 9, 4).astype(np.int32),
              "i16": rng.integers(-9, 9, 4).astype(np.int16),
              "i8": rng.integers(-9, 9, 4).astype(np.int8),
              "u8": rng.integers(0, 255, (2, 2)).astype(np.uint8),
              "b": np.array([True, False, True])}
    storages, obj = [], {}
    for i, (k, a) in enumerate(arrays.items()):
        storages.append(Storage(str(i), a))
        obj[k] = whole(storages[-1], a.shape)
    shared = rng.normal(size=30).astype(np.float32)
    st = Storage("shared", shared)
    # bfloat16: the top 16 bits of float32 values that bfloat16 holds exactly
    bf = np.array([1.0, -2.5, 0.0078125, 2.0 ** 127], np.float32)
    bst = Storage("bf", stype="BFloat16Storage", numel=4,
                  raw=(bf.view(np.uint32) >> 16).astype("<u2").tobytes())
    storages += [st, bst]
    obj["view"] = tensor(st, 3, (4, 3), (1, 4))           # transposed, at an offset
    obj["model"] = {"layer": {"w": tensor(st, 2, (6,), (1,))}, "bf": whole(bst, (2, 2))}
    path = tmp_path / f"sd.{fmt}.pth"
    WRITERS[fmt](path, obj, storages)
    sd = load_state_dict(str(path))
    assert sorted(sd) == sorted(list(arrays) + ["view", "model.layer.w", "model.bf"])
    for k, a in arrays.items():
        assert sd[k].dtype == a.dtype and sd[k].shape == a.shape, k
        np.testing.assert_array_equal(sd[k], a)
    np.testing.assert_array_equal(sd["view"], shared[3:15].reshape(3, 4).T)
    np.testing.assert_array_equal(sd["model.layer.w"], shared[2:8])
    assert sd["model.bf"].dtype == np.float32
    np.testing.assert_array_equal(sd["model.bf"], bf.reshape(2, 2))


# ---------------------------------------------------------------------------------------------
# Hostile files.

@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "eval"),
                                         ("dnnlib.util", "EasyDict"),  # NVlabs, not a state dict
                                         ("torch.storage", "_load_from_bytes")])
def test_refused_global_nothing_runs(tmp_path, fmt, module, name):
    marker = tmp_path / "executed"
    evil = {"w": fx.Reduce(fx.GlobalRef(module, name), (f"touch {marker}",))}
    path = tmp_path / f"evil.{fmt}.pth"
    WRITERS[fmt](path, evil, [])
    refused(path, f"not a PyTorch state dict: refusing to load global {module}.{name} "
                  "(not part of a tensor state dict")
    assert not marker.exists()


def test_zip_entry_smaller_than_its_storage_claims(tmp_path):
    # data.pkl: a tensor of 2**40 floats; the entry declares (and holds) 64 bytes
    st = Storage("0", np.zeros(16, np.float32), numel=2 ** 40)
    path = tmp_path / "liar.pth"
    write_zip(path, {"w": whole(st, (2 ** 40,))}, [st])
    out, peak = alloc_peak(lambda: refused(
        path, "refused: zip entry 'archive/data/0' declares 64 bytes, but its storage holds "
              f"{2 ** 40} x 4", "numel x itemsize"))
    assert peak < 16 << 20, peak  # (first: a refusal after a large allocation fails here)
    assert not isinstance(out, BaseException), out


def test_zip_storage_bomb_is_never_inflated(tmp_path):
    # a 16-float tensor whose entry honestly declares the 256 MiB of zeros it inflates to
    st = Storage("0", np.zeros(16, np.float32))
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("archive/data.pkl", _pickle({"w": whole(st, (16,))}, legacy=False))
        with z.open("archive/data/0", "w") as e:
            for _ in range(256):
                e.write(bytes(1 << 20))
    assert path.stat().st_size < 2 << 20
    out, peak = alloc_peak(lambda: refused(path, "declares 268435456 bytes", "16 x 4 = 64 bytes"))
    assert peak < 16 << 20, peak  # (first: a refusal after a large allocation fails here)
    assert not isinstance(out, BaseException), out


@pytest.mark.parametrize("numel", [2 ** 28, 2 ** 40])
def test_legacy_huge_numel_refused_before_anything_is_allocated(tmp_path, numel):
    # a few hundred bytes declaring a storage of numel floats (1 GiB: under MAX_ARRAY_BYTES; 4 TiB)
    st = Storage("0", np.zeros(4, np.float32), numel=numel)
    path = tmp_path / "huge.pth"
    write_legacy(path, {"w": whole(st, (numel,))}, [st])
    out, peak = alloc_peak(lambda: refused(
        path, f"not a PyTorch state dict: torch storage '0' declares {numel} x 4 = {numel * 4} "
              "bytes, more than the"))
    assert peak < 16 << 20, peak  # (first: a refusal after a large allocation fails here)
    assert not isinstance(out, BaseException), out


def test_legacy_storage_count_must_be_the_declared_one(tmp_path):
    # the reference declares 4 floats (the tensor reads all 4); the stream holds 2
    st = Storage("0", np.arange(4, dtype=np.float32))
    path = tmp_path / "short.pth"
    write_legacy(path, {"w": whole(st, (4,))}, [Storage("0", np.arange(2, dtype=np.float32))],
                 counts={"0": 2})
    # (write_legacy wrote the 2-float storage's bytes; the pickle refers to the 4-float one)
    refused(path, "torch storage '0' holds 2 elements, its reference declares 4")


def test_legacy_storage_missing_from_the_key_list(tmp_path):
    a, b = Storage("a", np.ones(3, np.float32)), Storage("b", np.ones(3, np.float32))
    path = tmp_path / "missing.pth"
    write_legacy(path, {"a": whole(a, (3,)), "b": whole(b, (3,))}, [a, b], keys=["a"])
    refused(path, "torch storage 'b' missing")


def test_shared_sub_dicts_are_counted_each_time(tmp_path):
    # 4**10 (about a million) names from a file of a few hundred bytes
    st = Storage("0", np.ones(1, np.float32))
    d = {"w": whole(st, (1,))}
    for _ in range(10):
        d = {"a": d, "b": d, "c": d, "d": d}
    path = tmp_path / "laughs.pth"
    write_zip(path, d, [st])
    refused(path, f"refused: more than {limits.MAX_STATE_DICT_ENTRIES} entries",
            "MAX_STATE_DICT_ENTRIES")


def test_nesting_depth(tmp_path):
    st = Storage("0", np.ones(1, np.float32))
    d = {"w": whole(st, (1,))}
    for _ in range(limits.MAX_STATE_DICT_DEPTH):
        d = {"x": d}
    path = tmp_path / "deep.pth"
    write_zip(path, d, [st])
    refused(path, f"limit MAX_STATE_DICT_DEPTH={limits.MAX_STATE_DICT_DEPTH}")


def test_array_byte_cap(tmp_path, monkeypatch):
    st = Storage("0", np.ones(64, np.float32))
    path = tmp_path / "big.pth"
    write_legacy(path, {"w": whole(st, (64,))}, [st])
    assert load_state_dict(str(path))["w"].shape == (64,)
    monkeypatch.setattr(limits, "MAX_ARRAY_BYTES", 200)  # less than the 256-byte storage
    refused(path, "limit MAX_ARRAY_BYTES=200")


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_damaged_files_one_line(tmp_path, fmt):
    st = Storage("0", np.ones(8, np.float32))
    path = tmp_path / f"ok.{fmt}.pth"
    WRITERS[fmt](path, {"w": whole(st, (8,))}, [st])
    raw = path.read_bytes()
    for cut in (len(raw) - 5, len(raw) // 2, 3):
        bad = tmp_path / f"cut{cut}.{fmt}.pth"
        bad.write_bytes(raw[:cut])
        refused(bad, "not a PyTorch state dict")
    tail = tmp_path / f"beyond.{fmt}.pth"  # a tensor reaching past its storage's end
    WRITERS[fmt](tail, {"w": tensor(st, 4, (8,), (1,))}, [st])
    refused(tail, "tensor extends beyond its storage")
    refused(tmp_path / "absent.pth", "cannot read")
