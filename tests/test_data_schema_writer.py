"""Schema, writer, manifest and pipeline: checked against TensorFlow's parsers, Pillow and NumPy."""
import hashlib
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from histaug_tf.common import UserError
from histaug_tf.data import manifest as manifest_lib
from histaug_tf.data import pipeline, schema
from histaug_tf.data.writer import DatasetWriter


# ---------------------------------------------------------------- schema
@pytest.mark.parametrize("label", [0, 1, 127, 128, 300, 2 ** 40])
def test_make_example_matches_tf_parsers(label):
    ser = schema.make_example(b"\x00\xffimg", label, "pcam/train/000123", "train", "synthetic")
    ex = tf.train.Example.FromString(ser)
    f = ex.features.feature
    assert set(f) == {"image", "label", "key", "group", "source"}
    assert f["image"].bytes_list.value == [b"\x00\xffimg"]
    assert f["label"].int64_list.value == [label]
    assert f["key"].bytes_list.value == [b"pcam/train/000123"]
    assert f["group"].bytes_list.value == [b"train"]
    assert f["source"].bytes_list.value == [b"synthetic"]
    # and the reference serializer produces something our parser reads the same
    ref = tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\x00\xffimg"])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "key": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"pcam/train/000123"])),
        "group": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"train"])),
        "source": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"synthetic"])),
    })).SerializeToString()
    for s in (ser, ref):
        p = schema.parse_example(tf.constant(s))
        assert int(p["label"]) == label and p["key"].numpy() == b"pcam/train/000123"
        assert p["image"].numpy() == b"\x00\xffimg" and p["source"].numpy() == b"synthetic"


@pytest.mark.parametrize("shape", [(7, 5, 3), (1, 1, 1), (13, 9, 4), (50, 50, 3), (6, 4, 1)])
def test_png_roundtrip_with_libpng_and_pillow(shape):
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    img[: shape[0] // 2] = 200  # some runs as well as noise
    png = schema.encode_image(img, "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    tf_img = tf.io.decode_png(png, channels=shape[2]).numpy()
    np.testing.assert_array_equal(tf_img, img)
    pil = np.asarray(Image.open(io.BytesIO(png)))
    np.testing.assert_array_equal(pil.reshape(shape), img)
    dec = schema.decode_image(tf.constant(png), "png", shape).numpy()
    np.testing.assert_array_equal(dec, img)
    raw = schema.encode_image(img, "raw")
    np.testing.assert_array_equal(schema.decode_image(tf.constant(raw), "raw", shape).numpy(), img)


def _foreign_pngs(img):
    """The same image as PNGs laid out differently from encode_png (each must take the libpng path)."""
    import zlib
    ours = schema.encode_png(img)
    buf = io.BytesIO()
    Image.fromarray(img.squeeze(-1) if img.shape[2] == 1 else img).save(buf, format="PNG", optimize=True)
    pillow = buf.getvalue()                                   # adaptive per-row filters
    ihdr_end = 33
    text = ours[:ihdr_end] + schema._png_chunk(b"tEXt", b"Comment\x00x") + ours[ihdr_end:]  # extra chunk
    h, w, c = img.shape
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))   # filter None
    none = ours[:ihdr_end] + schema._png_chunk(b"IDAT", zlib.compress(raw)) + schema._png_chunk(b"IEND", b"")
    data = zlib.compress(raw)
    split = ours[:ihdr_end] + schema._png_chunk(b"IDAT", data[:5]) + schema._png_chunk(b"IDAT", data[5:]) + \
        schema._png_chunk(b"IEND", b"")                               # IDAT in two chunks
    return {"pillow": pillow, "text": text, "none": none, "split": split}


@pytest.mark.parametrize("shape", [(12, 10, 3), (5, 7, 1), (9, 9, 4), (96, 96, 3)])
def test_decode_images_batch_equals_source(shape, monkeypatch):
    calls = []
    undo = schema._undo_sub_filter
    monkeypatch.setattr(schema, "_undo_sub_filter", lambda a, s: calls.append(1) or undo(a, s))
    rng = np.random.default_rng(shape[0])
    imgs = rng.integers(0, 256, (6,) + shape, dtype=np.uint8)
    imgs[1] = 17  # a flat image: long zlib runs
    dec = tf.function(lambda s: schema.decode_images(s, "png", shape))
    ours = [schema.encode_png(im) for im in imgs]
    np.testing.assert_array_equal(dec(tf.constant(ours)).numpy(), imgs)
    assert len(calls) == 1  # our layout took the fast path (one batched unfilter)
    for kind, pngs in zip(("pillow", "text", "none", "split"),
                          zip(*[_foreign_pngs(im).values() for im in imgs])):
        before = len(calls)
        np.testing.assert_array_equal(dec(tf.constant(list(pngs))).numpy(), imgs, err_msg=kind)
        mixed = ours[:3] + list(pngs[3:])                     # one batch, both layouts
        np.testing.assert_array_equal(dec(tf.constant(mixed)).numpy(), imgs, err_msg=kind)
        if kind != "pillow":  # (Pillow may pick the Sub filter for every row: then it is our layout)
            assert len(calls) == before, kind  # another layout went through libpng
    raws = [im.tobytes() for im in imgs]
    np.testing.assert_array_equal(schema.decode_images(tf.constant(raws), "raw", shape).numpy(), imgs)


def test_decode_images_corrupt_png_fails():
    img = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    good = schema.encode_png(img)
    # inside the deflate data, and the stream's Adler-32 (the 4 bytes before the IDAT CRC):
    # inflate must fail, not return garbage
    for pos in (45, len(good) - 16 - 2):
        png = bytearray(good)
        png[pos] ^= 0xFF
        with pytest.raises((tf.errors.InvalidArgumentError, tf.errors.DataLossError)):
            schema.decode_images(tf.constant([good, bytes(png)]), "png", (8, 8, 3)).numpy()


# ---------------------------------------------------------------- writer + manifest
def _write(out, imgs, labels, splits, encoding="png", shard_size=3, **kw):
    with DatasetWriter(out, "toy", imgs.shape[1:], encoding=encoding, shard_size=shard_size, **kw) as w:
        for i, (im, lab, sp) in enumerate(zip(imgs, labels, splits)):
            w.add(sp, im, int(lab), key=f"toy/{sp}/{i}", group=sp)
    return out


@pytest.fixture
def toy(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (17, 12, 10, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, 17)
    splits = np.array(["train"] * 11 + ["test"] * 6)
    return imgs, labels, splits


@pytest.mark.parametrize("encoding", ["png", "raw"])
def test_writer_shards_manifest_and_exact_readback(tmp_path, toy, encoding):
    imgs, labels, splits = toy
    out = _write(str(tmp_path / "ds"), imgs, labels, splits, encoding=encoding)
    names = sorted(os.listdir(out))
    assert names == ["manifest.json"] + [f"test-0000{i}-of-00002.tfrecord" for i in range(2)] + \
        [f"train-0000{i}-of-00004.tfrecord" for i in range(4)]
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert m["format_version"] == 1 and m["encoding"] == encoding and m["image_shape"] == [12, 10, 3]
    assert m["label_names"] == ["normal", "tumour"]
    for sp in ("train", "test"):
        sel = splits == sp
        info = m["splits"][sp]
        assert info["num_examples"] == sel.sum()
        assert info["class_counts"] == [int((labels[sel] == 0).sum()), int((labels[sel] == 1).sum())]
        assert [s["num_examples"] for s in info["shards"]] == \
            [min(3, sel.sum() - 3 * i) for i in range(len(info["shards"]))]
        for s in info["shards"]:
            data = open(os.path.join(out, s["file"]), "rb").read()
            assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["num_bytes"]
        seen = {}
        for ex in pipeline.make_dataset(out, sp, pixel_range=None, with_meta=True):
            k = ex["key"].numpy().decode()
            i = int(k.split("/")[-1])
            seen[k] = True
            np.testing.assert_array_equal(ex["image"].numpy(), imgs[i])
            assert int(ex["label"]) == labels[i] and ex["group"].numpy().decode() == sp
            assert ex["source"].numpy() == b"real"
        assert len(seen) == sel.sum()


def test_writer_exception_leaves_nothing(tmp_path, toy):
    imgs, labels, _ = toy
    out = str(tmp_path / "ds")
    with pytest.raises(RuntimeError):
        with DatasetWriter(out, "toy", imgs.shape[1:], shard_size=2) as w:
            for i in range(5):
                w.add("train", imgs[i], 0, key=str(i), group="g")
            raise RuntimeError("boom")
    assert not os.path.exists(out)


def test_existing_output_refused_then_overwritten(tmp_path, toy):
    imgs, labels, splits = toy
    out = _write(str(tmp_path / "ds"), imgs, labels, splits)
    with pytest.raises(UserError, match="exists.*--overwrite"):
        _write(out, imgs[:4], labels[:4], splits[:4])
    _write(out, imgs[:4], labels[:4], splits[:4], overwrite=True)
    m = manifest_lib.load_manifest(out)
    assert m["splits"]["train"]["num_examples"] == 4 and "test" not in m["splits"]
    assert len([n for n in os.listdir(out) if n.endswith(".tfrecord")]) == 2
    open(os.path.join(out, "notes.txt"), "w").write("mine")
    with pytest.raises(UserError, match="notes.txt"):
        _write(out, imgs[:4], labels[:4], splits[:4], overwrite=True)


def test_duplicate_key_and_bad_label_rejected(tmp_path, toy):
    imgs = toy[0]
    with pytest.raises(UserError, match="duplicate"):
        with DatasetWriter(str(tmp_path / "a"), "toy", imgs.shape[1:]) as w:
            w.add("train", imgs[0], 0, "k", "g")
            w.add("train", imgs[1], 1, "k", "g")
    with pytest.raises(ValueError, match="label"):
        with DatasetWriter(str(tmp_path / "b"), "toy", imgs.shape[1:]) as w:
            w.add("train", imgs[0], 2, "k", "g")
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_manifest_checks_missing_and_truncated_shards(tmp_path, toy):
    imgs, labels, splits = toy
    out = _write(str(tmp_path / "ds"), imgs, labels, splits)
    assert manifest_lib.load_manifest(out, check="count")["splits"]["train"]["num_examples"] == 11
    shard = os.path.join(out, "train-00001-of-00004.tfrecord")
    data = open(shard, "rb").read()
    manifest_lib.load_manifest(out, check="sha256")
    open(shard, "wb").write(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit differs
    manifest_lib.load_manifest(out, check="size")
    with pytest.raises(UserError, match="train-00001-of-00004.tfrecord: sha256 differs"):
        manifest_lib.load_manifest(out, check="sha256")
    open(shard, "wb").write(data[:-10])
    with pytest.raises(UserError, match="train-00001-of-00004.tfrecord: has"):
        pipeline.make_dataset(out, "train")
    os.remove(shard)
    with pytest.raises(UserError, match="train-00001-of-00004.tfrecord: shard .* missing"):
        pipeline.make_dataset(out, "train")
    os.remove(os.path.join(out, "manifest.json"))
    with pytest.raises(UserError, match="manifest.json: missing"):
        pipeline.dataset_info(out)


# ---------------------------------------------------------------- pipeline
def _read_all(ds):
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def _by_key(out, split, **kw):
    res = {}
    for ex in pipeline.make_dataset(out, split, with_meta=True, **kw):
        res[int(ex["key"].numpy().decode().split("/")[-1])] = ex["image"].numpy()
    return res


def test_crop_pad_resize_scale_against_numpy(tmp_path, toy):
    imgs, labels, splits = toy
    out = _write(str(tmp_path / "ds"), imgs, labels, splits)
    crop = _by_key(out, "test", resolution=(8, 6), resize_mode="crop", pixel_range=None)
    pad = _by_key(out, "test", resolution=16, resize_mode="pad", pixel_range=(0, 1))
    res = _by_key(out, "test", resolution=(24, 20), resize_mode="resize", pixel_range=(-1, 1))
    for i, im in crop.items():
        np.testing.assert_array_equal(im, imgs[i][2:10, 2:8])       # (12-8)//2, (10-6)//2
        ref = np.full((16, 16, 3), 255, np.uint8)
        ref[2:14, 3:13] = imgs[i]
        np.testing.assert_allclose(pad[i], ref / 255.0, atol=1e-6)
        # 2x bilinear upsampling: interior pixel (2y+0.5)/2-0.5 = y - 0.25 → 0.75*a[y] + 0.25*a[y-1]
        a = imgs[i].astype(np.float64)
        rows = 0.75 * a[1:11] + 0.25 * a[0:10]          # output rows 2, 4, ..., 20  (even)
        ref2 = 0.75 * rows[:, 1:10] + 0.25 * rows[:, 0:9]  # output cols 2, 4, ..., 18
        got = (res[i][2:22:2, 2:20:2] + 1) * 127.5
        np.testing.assert_allclose(got, ref2, atol=1e-3)
    with pytest.raises(UserError, match="cannot crop"):
        pipeline.make_dataset(out, "test", resolution=16, resize_mode="crop")
    with pytest.raises(UserError, match="cannot pad"):
        pipeline.make_dataset(out, "test", resolution=4, resize_mode="pad")


def test_flips_rot90_are_dihedral_and_seeded(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (12, 6, 6, 3), dtype=np.uint8)
    out = _write(str(tmp_path / "ds"), imgs, np.zeros(12, int), ["train"] * 12)
    got = _by_key(out, "train", flips=True, rot90=True, pixel_range=None, seed=3)
    again = _by_key(out, "train", flips=True, rot90=True, pixel_range=None, seed=3)
    variants_seen = set()
    for i, im in got.items():
        np.testing.assert_array_equal(im, again[i])
        cands = []
        for k in range(4):
            r = np.rot90(imgs[i], k)
            cands += [r, r[:, ::-1]]
        match = [j for j, c in enumerate(cands) if np.array_equal(c, im)]
        assert match, i
        variants_seen.add(match[0])
    assert len(variants_seen) > 2
    hor = _by_key(out, "train", flips="horizontal", pixel_range=None, seed=3)
    kinds = set()
    for i, im in hor.items():
        same, mirrored = np.array_equal(im, imgs[i]), np.array_equal(im, imgs[i][:, ::-1])
        assert same or mirrored
        kinds.add(same)
    assert kinds == {True, False}


@pytest.mark.parametrize("flips,rot90", [(True, True), ("horizontal", False), (True, False),
                                         (False, True), ("horizontal", True)])
def test_batched_augment_equals_per_image_ops(flips, rot90):
    """pipeline._augment (one partition/stitch per batch) against tf.image per image, same draws."""
    base = np.random.default_rng(2).integers(0, 256, (1, 5, 5, 2), dtype=np.uint8)  # no symmetry
    imgs = np.repeat(base, 64, axis=0)
    seed = tf.constant([7, 11], tf.int32)
    got = pipeline._augment(tf.constant(imgs), seed, flips, rot90).numpy()
    draws = tf.random.stateless_uniform([3, 64], seed, 0, 4, dtype=tf.int32).numpy()
    seen = set()
    for i, im in enumerate(imgs):
        ref = tf.constant(im)
        if flips and draws[0, i] % 2:
            ref = tf.image.flip_left_right(ref)
        if flips and flips != "horizontal" and draws[1, i] % 2:
            ref = tf.image.flip_up_down(ref)
        if rot90:
            ref = tf.image.rot90(ref, int(draws[2, i]))
        np.testing.assert_array_equal(got[i], ref.numpy(), err_msg=str(i))
        seen.add(got[i].tobytes())
    # every reachable element of the dihedral group occurs in 64 draws
    assert len(seen) == {(True, True): 8, ("horizontal", False): 2, (True, False): 4, (False, True): 4,
                         ("horizontal", True): 8}[(flips, rot90)]


def test_shuffle_repeat_batch_and_class_filter(tmp_path, toy):
    imgs, labels, splits = toy
    out = _write(str(tmp_path / "ds"), imgs, labels, splits)
    ds = pipeline.make_dataset(out, "train", batch_size=4, shuffle_buffer=100, repeat=True, seed=0)
    x, y = next(iter(ds))
    assert x.shape == (4, 12, 10, 3) and x.dtype == tf.float32 and y.dtype == tf.int32
    assert -1.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0
    keys = [ex["key"].numpy() for ex in pipeline.make_dataset(out, "train", repeat=True, shuffle_buffer=50,
                                                              seed=0, with_meta=True).take(22)]
    assert sorted(keys[:11]) == sorted(keys[11:]) and keys[:11] != keys[11:]  # 2 epochs, reshuffled
    a = [ex["key"].numpy() for ex in pipeline.make_dataset(out, "train", shuffle_buffer=50, seed=5,
                                                           with_meta=True)]
    b = [ex["key"].numpy() for ex in pipeline.make_dataset(out, "train", shuffle_buffer=50, seed=5,
                                                           with_meta=True)]
    assert a == b
    _, y1 = _read_all(pipeline.make_dataset(out, "train", class_filter=1, batch_size=5))
    assert (y1 == 1).all() and len(y1) == (labels[splits == "train"] == 1).sum()


def test_worker_sharding_by_file(tmp_path, toy):
    imgs, labels, splits = toy
    out = _write(str(tmp_path / "ds"), imgs, labels, splits)  # train: 4 shards of 3,3,3,2
    parts = [[ex["key"].numpy() for ex in pipeline.make_dataset(out, "train", num_workers=2,
                                                                worker_index=i, with_meta=True)]
             for i in range(2)]
    assert len(parts[0]) == 6 and len(parts[1]) == 5
    assert not set(parts[0]) & set(parts[1])
    assert len(set(parts[0]) | set(parts[1])) == 11
    with pytest.raises(UserError, match="2 shard.*fewer than the 3 workers"):
        pipeline.make_dataset(out, "test", num_workers=3, worker_index=0)


def test_mix_exact_ratio():
    real = tf.data.Dataset.from_tensors(tf.constant(0)).repeat()
    syn = tf.data.Dataset.from_tensors(tf.constant(1)).repeat()
    for ratio in (0.25, 0.5, 1 / 3, 0.1):
        v = np.array(list(pipeline.mix(real, syn, ratio, seed=0).take(3000).as_numpy_iterator()))
        q = {0.25: 4, 0.5: 2, 1 / 3: 3, 0.1: 10}[ratio]
        blocks = v.reshape(-1, q)
        assert (blocks.sum(1) == round(ratio * q)).all()  # exact in every block of q
        assert v.mean() == pytest.approx(ratio, abs=1e-12)
    v1 = list(pipeline.mix(real, syn, 0.25, seed=1).take(400).as_numpy_iterator())
    v2 = list(pipeline.mix(real, syn, 0.25, seed=1).take(400).as_numpy_iterator())
    assert v1 == v2 and v1 != list(pipeline.mix(real, syn, 0.25, seed=2).take(400).as_numpy_iterator())


def test_dataset_info(tmp_path, toy):
    imgs, labels, splits = toy
    out = _write(str(tmp_path / "ds"), imgs, labels, splits)
    info = pipeline.dataset_info(out)
    assert info["num_examples"] == {"train": 11, "test": 6}
    assert info["image_shape"] == (12, 10, 3) and info["label_names"] == ["normal", "tumour"]
