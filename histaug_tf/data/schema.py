"""The single definition of a histaug_tf TFRecord example (docs/architecture.md, "Dataset directory").

Every example is a ``tf.train.Example`` with exactly these features:

=========  =======  ==========================================================================
feature    type     meaning
=========  =======  ==========================================================================
image      bytes    PNG (default) or raw uint8 HWC (row-major), as ``manifest['encoding']`` says
label      int64    0 = normal, 1 = tumour / IDC (or the index into ``manifest['label_names']``)
key        bytes    unique, stable id of the patch (``pcam/train/000123``, ``idc/10253/x1351_y1101``)
group      bytes    the unit that never straddles splits (PCAM: split; IDC: patient; synthetic: run)
source     bytes    ``real`` or ``synthetic``
=========  =======  ==========================================================================

The writing half (``encode_image``, ``make_example``) is pure Python/NumPy — no TensorFlow import —
so that encoder worker processes stay small. ``make_example`` emits the protobuf wire format of
``tf.train.Example`` directly; the tests check it against TensorFlow's own parser. The reading half
(``parse_example``, ``decode_image``, ``decode_images``) uses TensorFlow and is imported lazily.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

FORMAT_VERSION = 1
ENCODINGS = ("png", "raw")
SOURCES = ("real", "synthetic")
FEATURE_NAMES = ("image", "label", "key", "group", "source")

# --------------------------------------------------------------------------------------------
# Encoding images (no TensorFlow).
# --------------------------------------------------------------------------------------------
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPE = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (gray, RGB, RGBA)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray, level: int = 1) -> bytes:
    """Lossless 8-bit PNG of a uint8 HWC array (C in 1, 3, 4), written with NumPy + zlib.

    Uses the PNG "Sub" filter on every row (each byte minus the same channel of the pixel to its
    left) and zlib run-length coding at level 1: on 96x96 tissue patches about 2x faster than
    Pillow's adaptive encoder for the same size (general LZ77 matching finds little in noisy tissue
    after the filter; runs still shrink flat background). Any PNG decoder reads it (the tests
    decode with TensorFlow's libpng and Pillow).
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in _PNG_COLOR_TYPE:
        raise ValueError(f"encode_png needs uint8 HWC with 1, 3 or 4 channels, got {img.dtype} {img.shape}")
    h, w, c = img.shape
    rows = img.reshape(h, w * c)
    filt = np.empty((h, w * c + 1), np.uint8)
    filt[:, 0] = 1  # filter type Sub
    filt[:, 1:1 + c] = rows[:, :c]
    np.subtract(rows[:, c:], rows[:, :-c], out=filt[:, 1 + c:])  # uint8 wrap-around == mod 256
    comp = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    idat = comp.compress(filt.tobytes()) + comp.flush()
    # the layout decode_images' fast path recognises: signature + IHDR, one IDAT, IEND
    return _png_prefix((h, w, c)) + _png_chunk(b"IDAT", idat) + _IEND_CHUNK


def encode_image(image: np.ndarray, encoding: str = "png") -> bytes:
    """Bytes for the ``image`` feature: PNG or raw row-major uint8 HWC."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3:
        raise ValueError(f"image must be uint8 HWC, got {img.dtype} {img.shape}")
    if encoding == "png":
        return encode_png(img)
    if encoding == "raw":
        return np.ascontiguousarray(img).tobytes()
    raise ValueError(f"unknown encoding {encoding!r} (expected one of {ENCODINGS})")


# --------------------------------------------------------------------------------------------
# tf.train.Example wire format (no TensorFlow).
#   Example  { Features features = 1; }
#   Features { map<string, Feature> feature = 1; }   (map entry: key = 1, value = 2)
#   Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
#   BytesList { repeated bytes value = 1; }   Int64List { repeated int64 value = 1 [packed]; }
# --------------------------------------------------------------------------------------------
_SMALL_VARINTS = [bytes((i,)) for i in range(128)]


def _varint(n: int) -> bytes:
    if 0 <= n < 128:
        return _SMALL_VARINTS[n]
    if n < 0:
        n += 1 << 64  # int64 two's complement, as protobuf does
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
    return _varint((field << 3) | 2) + _varint(len(payload)) + payload


def _bytes_feature(value: bytes) -> bytes:
    return _len_field(1, _len_field(1, value))  # Feature.bytes_list { value }


def _int64_feature(value: int) -> bytes:
    return _len_field(3, _len_field(1, _varint(int(value))))  # Feature.int64_list { packed value }


_KEY_FIELD = {k: _len_field(1, k) for k in (b"group", b"image", b"key", b"label", b"source")}


def _entry(name: bytes, feature: bytes) -> bytes:
    """One map<string, Feature> entry of Features (field 1): {key = 1: name, value = 2: feature}."""
    return _len_field(1, _KEY_FIELD[name] + _len_field(2, feature))


def _as_bytes(s) -> bytes:
    return s if isinstance(s, bytes) else str(s).encode("utf-8")


def make_example(image_bytes: bytes, label: int, key, group, source="real") -> bytes:
    """Serialized ``tf.train.Example`` holding one patch (see the module docstring)."""
    source = _as_bytes(source)
    if source.decode() not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    features = b"".join((
        _entry(b"group", _bytes_feature(_as_bytes(group))),
        _entry(b"image", _bytes_feature(bytes(image_bytes))),
        _entry(b"key", _bytes_feature(_as_bytes(key))),
        _entry(b"label", _int64_feature(label)),
        _entry(b"source", _bytes_feature(source)),
    ))
    return _len_field(1, features)


# --------------------------------------------------------------------------------------------
# Reading (TensorFlow).
# --------------------------------------------------------------------------------------------
def feature_spec():
    """The ``tf.io`` feature spec of an example."""
    import tensorflow as tf

    return {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "key": tf.io.FixedLenFeature([], tf.string),
        "group": tf.io.FixedLenFeature([], tf.string, default_value=b""),
        "source": tf.io.FixedLenFeature([], tf.string, default_value=b"real"),
    }


def parse_example(serialized):
    """Parse one serialized example (scalar string tensor) or a batch (1-D) into a dict of tensors."""
    import tensorflow as tf

    serialized = tf.convert_to_tensor(serialized)
    if serialized.shape.rank == 0:
        return tf.io.parse_single_example(serialized, feature_spec())
    return tf.io.parse_example(serialized, feature_spec())


def decode_image(image_bytes, encoding: str, shape):
    """Decode one ``image`` feature to a uint8 tensor of static shape ``shape`` (H, W, C)."""
    import tensorflow as tf

    h, w, c = (int(s) for s in shape)
    if encoding == "png":
        img = tf.io.decode_png(image_bytes, channels=c, dtype=tf.uint8)
    elif encoding == "raw":
        img = tf.io.decode_raw(image_bytes, tf.uint8)
    else:
        raise ValueError(f"unknown encoding {encoding!r} (expected one of {ENCODINGS})")
    return tf.ensure_shape(tf.reshape(img, [h, w, c]), [h, w, c])


_IEND_CHUNK = _png_chunk(b"IEND", b"")
_IDAT_OFFSET = 33          # signature (8) + IHDR chunk (4 length + 4 tag + 13 data + 4 CRC)
_PNG_OVERHEAD = 57         # everything but the IDAT data: _IDAT_OFFSET + 8 + IDAT CRC (4) + IEND (12)


def _png_prefix(shape) -> bytes:
    """Signature + IHDR chunk that ``encode_png`` writes for an image of ``shape`` (H, W, C)."""
    h, w, c = shape
    return _PNG_SIG + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, _PNG_COLOR_TYPE[c], 0, 0, 0))


def _undo_sub_filter(filtered: np.ndarray, shape) -> np.ndarray:
    """[B, H, W*C+1] Sub-filtered scanlines (filter byte first) → uint8 [B, H, W, C].

    The Sub filter stores each byte minus the same channel of the pixel to its left (mod 256), so
    the image is the running sum along the row, per channel, in uint8 arithmetic (wraps mod 256).
    """
    h, w, c = shape
    rows = filtered[:, :, 1:].reshape(len(filtered), h, w, c)
    return np.cumsum(rows, axis=2, dtype=np.uint8)


def decode_images(image_bytes, encoding: str, shape):
    """Decode a 1-D batch of ``image`` features to a uint8 tensor [B, H, W, C] (static H, W, C).

    ``raw``: one ``decode_raw`` for the batch. ``png``: when every PNG of the batch has exactly the
    layout ``encode_png`` writes (signature, this shape's IHDR, one IDAT, IEND) and every scanline
    uses the Sub filter, the IDAT streams are inflated by one batched ``decode_compressed`` (zlib
    checks each stream's Adler-32) and the filter is undone with one NumPy running sum. libpng
    inflates row by row, which on 96x96 patches costs about twice as much CPU (see
    ``benchmarks/bench_pipeline.py``). Any other PNG in the batch (other filters, ancillary chunks,
    another shape or colour type) sends the whole batch through ``tf.io.decode_png``, so the result
    is the same as decoding each image with libpng. The running sum is a ``tf.numpy_function``
    (TensorFlow's own cumsum costs ~3x more here): the input pipeline runs in a Python process, as
    every pipeline of this project does (not in the tf.data service).
    """
    import tensorflow as tf

    h, w, c = (int(s) for s in shape)
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    if encoding == "raw":
        img = tf.io.decode_raw(image_bytes, tf.uint8)
        return tf.ensure_shape(tf.reshape(img, [-1, h, w, c]), [None, h, w, c])
    if encoding != "png":
        raise ValueError(f"unknown encoding {encoding!r} (expected one of {ENCODINGS})")

    def with_libpng():
        return tf.map_fn(lambda b: decode_image(b, "png", (h, w, c)), image_bytes,
                         fn_output_signature=tf.TensorSpec([h, w, c], tf.uint8))

    if c not in _PNG_COLOR_TYPE:
        return tf.ensure_shape(with_libpng(), [None, h, w, c])
    prefix = _png_prefix((h, w, c))
    lengths = tf.strings.length(image_bytes)

    def vec(v):
        return tf.fill(tf.shape(image_bytes), tf.constant(v, tf.int32))

    def check_layout():
        size_bytes = tf.io.decode_raw(tf.strings.substr(image_bytes, vec(_IDAT_OFFSET), vec(4)), tf.uint8)
        size = tf.reduce_sum(tf.cast(size_bytes, tf.int64) * tf.constant([1 << 24, 1 << 16, 1 << 8, 1],
                                                                         tf.int64), axis=1)
        ok = tf.reduce_all(tf.equal(tf.strings.substr(image_bytes, vec(0), vec(len(prefix))), prefix))
        ok &= tf.reduce_all(tf.equal(tf.strings.substr(image_bytes, vec(_IDAT_OFFSET + 4), vec(4)), b"IDAT"))
        ok &= tf.reduce_all(tf.equal(size + _PNG_OVERHEAD, tf.cast(lengths, tf.int64)))
        ok &= tf.reduce_all(tf.equal(tf.strings.substr(image_bytes, lengths - 12, vec(12)), _IEND_CHUNK))
        return tf.cond(ok, lambda: inflate(tf.cast(size, tf.int32)), with_libpng)

    def inflate(size):
        stream = tf.strings.substr(image_bytes, vec(_IDAT_OFFSET + 8), size)
        scan = tf.io.decode_compressed(stream, compression_type="ZLIB")
        scan = tf.reshape(tf.io.decode_raw(scan, tf.uint8), [-1, h, w * c + 1])
        return tf.cond(tf.reduce_all(tf.equal(scan[:, :, 0], 1)),
                       lambda: tf.numpy_function(lambda a: _undo_sub_filter(a, (h, w, c)), [scan],
                                                 tf.uint8, stateful=False),
                       with_libpng)

    img = tf.cond(tf.reduce_all(lengths >= _PNG_OVERHEAD), check_layout, with_libpng)
    return tf.ensure_shape(tf.reshape(img, [-1, h, w, c]), [None, h, w, c])


def decode_image_numpy(image_bytes: bytes, encoding: str, shape) -> np.ndarray:
    """NumPy/Pillow decoding of one ``image`` feature (for tools that must not import TensorFlow)."""
    shape = tuple(int(s) for s in shape)
    if encoding == "raw":
        return np.frombuffer(image_bytes, np.uint8).reshape(shape)
    import io

    from PIL import Image

    arr = np.asarray(Image.open(io.BytesIO(image_bytes)))
    return arr.reshape(shape)
