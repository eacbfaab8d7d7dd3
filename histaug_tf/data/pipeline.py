"""tf.data input pipelines over a dataset directory (manifest + TFRecord shards).

    ds = make_dataset("tfrecords/pcam", "train", resolution=64, resize_mode="crop",
                      flips=True, shuffle_buffer=10000, repeat=True, batch_size=256, seed=0)
    for images, labels in ds: ...        # float32 [B, 64, 64, 3] in [-1, 1], int32 [B]

Order of operations: shard files (per worker) → shuffle file order (per epoch) → interleaved reads
→ shuffle serialized records → repeat → [parse → class filter] → batch → parse → decode → map to
the resolution (crop | resize | pad) → flips / 90° rotations → scale pixels → [unbatch] → prefetch.
Everything after batching is a whole-batch operation (one decode call per batch).
"""
from __future__ import annotations

import fractions

import numpy as np
import tensorflow as tf

from histaug_tf.common import UserError
from histaug_tf.data import schema
from histaug_tf.data.manifest import load_manifest, split_info, split_shard_paths

RESIZE_MODES = ("crop", "resize", "pad")
PAD_VALUE = 255  # padding is white, like the glass around tissue in H&E
INTERNAL_BATCH = 128  # decode batch of a dataset that yields single examples (batch_size=None)


def dataset_info(data_dir: str) -> dict:
    """Summary of a dataset: image shape, encoding, label names, examples and class counts per split."""
    m = load_manifest(data_dir, check="exists")
    return {
        "name": m["name"],
        "image_shape": tuple(m["image_shape"]),
        "encoding": m["encoding"],
        "label_names": list(m["label_names"]),
        "num_examples": {s: v["num_examples"] for s, v in m["splits"].items()},
        "class_counts": {s: list(v["class_counts"]) for s, v in m["splits"].items()},
        "num_shards": {s: len(v["shards"]) for s, v in m["splits"].items()},
        "provenance": m.get("provenance", {}),
    }


def _target_shape(src_hw, resolution):
    if resolution is None:
        return tuple(src_hw)
    if isinstance(resolution, (int, np.integer)):
        return (int(resolution), int(resolution))
    h, w = resolution
    return (int(h), int(w))


def map_resolution(image, src_hw, dst_hw, mode):
    """uint8/float HWC (or NHWC) image → dst_hw by centre crop, bilinear resize or centre pad."""
    (sh, sw), (dh, dw) = src_hw, dst_hw
    if (sh, sw) == (dh, dw):
        return image
    if mode == "crop":
        oy, ox = (sh - dh) // 2, (sw - dw) // 2
        return image[..., oy:oy + dh, ox:ox + dw, :]
    if mode == "pad":
        py, px = dh - sh, dw - sw
        pads = [[py // 2, py - py // 2], [px // 2, px - px // 2], [0, 0]]
        if image.shape.rank == 4:
            pads = [[0, 0]] + pads
        return tf.pad(image, pads, constant_values=tf.cast(PAD_VALUE, image.dtype))
    dtype = image.dtype
    out = tf.image.resize(tf.cast(image, tf.float32), (dh, dw), method="bilinear", antialias=True)
    if dtype == tf.uint8:
        out = tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)
    return out


def _check_resolution(mode, src_hw, dst_hw, data_dir):
    if mode not in RESIZE_MODES:
        raise UserError(f"resize_mode={mode!r}: expected one of {RESIZE_MODES}")
    (sh, sw), (dh, dw) = src_hw, dst_hw
    if mode == "crop" and (dh > sh or dw > sw):
        raise UserError(f"{data_dir}: cannot crop {sh}x{sw} images to {dh}x{dw}; use resize_mode=pad or resize")
    if mode == "pad" and (dh < sh or dw < sw):
        raise UserError(f"{data_dir}: cannot pad {sh}x{sw} images to {dh}x{dw}; use resize_mode=crop or resize")


def _scale(image, pixel_range):
    if pixel_range is None:
        return image
    lo, hi = (float(v) for v in pixel_range)
    return tf.cast(image, tf.float32) * ((hi - lo) / 255.0) + lo


def _augment(images, seed_pair, flips, rot90):
    """Random flips and 90° rotations of a batch [B, H, W, C], drawn per image from ``seed_pair``.

    Per image: a horizontal flip (p = 1/2), with ``flips`` not "horizontal" a vertical flip
    (p = 1/2), then with ``rot90`` a rotation by k·90° counter-clockwise, k uniform in 0..3 (as
    ``tf.image.rot90``). Every composition is an element of the dihedral group with the form
    transpose^t, then flip_lr^p, then flip_ud^q; the batch is partitioned by (t, p, q), each part
    transformed once, and stitched back in order (a broadcast select per step costs ~6x more).
    """
    n = tf.shape(images)[0]
    draws = tf.random.stateless_uniform([3, n], seed_pair, 0, 4, dtype=tf.int32)
    zero = tf.zeros([n], tf.bool)
    a = tf.equal(draws[0] % 2, 1) if flips else zero                           # flip_lr first
    b = tf.equal(draws[1] % 2, 1) if flips and flips != "horizontal" else zero  # then flip_ud
    k = draws[2] if rot90 else tf.zeros([n], tf.int32)
    # rot90 by k after flips (a, b), in the normal form (t, p, q):
    # k=0: (0, a, b); k=1: (1, b, ¬a); k=2: (0, ¬a, ¬b); k=3: (1, ¬b, a).
    t = tf.equal(k % 2, 1)
    p = tf.not_equal(tf.where(t, b, a), tf.logical_or(tf.equal(k, 2), tf.equal(k, 3)))
    q = tf.not_equal(tf.where(t, a, b), tf.logical_or(tf.equal(k, 1), tf.equal(k, 2)))
    group = tf.cast(t, tf.int32) * 4 + tf.cast(p, tf.int32) * 2 + tf.cast(q, tf.int32)
    parts = tf.dynamic_partition(images, group, 8)
    index = tf.dynamic_partition(tf.range(n), group, 8)
    out = []
    for g, part in enumerate(parts):
        if g & 4:
            part = tf.transpose(part, [0, 2, 1, 3])
        axes = ([2] if g & 2 else []) + ([1] if g & 1 else [])
        out.append(tf.reverse(part, axes) if axes else part)
    return tf.ensure_shape(tf.dynamic_stitch(index, out), images.shape)


def make_dataset(data_dir, split="train", *, resolution=None, resize_mode="crop",
                 pixel_range=(-1, 1), flips=False, rot90=False, shuffle_buffer=0, repeat=False,
                 batch_size=None, drop_remainder=False, seed=None, class_filter=None,
                 num_workers=1, worker_index=0, with_meta=False, check="size",
                 num_parallel_reads=4, deterministic=None):
    """A ``tf.data.Dataset`` of one split of a dataset directory.

    Args:
      data_dir: directory holding ``manifest.json`` and shards.
      split: split name (``train``, ``valid``, ``test``).
      resolution: int or (H, W) target; None keeps the stored size.
      resize_mode: ``crop`` (centre crop — keeps PCAM's labelled centre), ``resize`` (bilinear,
        antialiased) or ``pad`` (centre, white).
      pixel_range: (lo, hi) float32 output range, e.g. (-1, 1) or (0, 1); None → uint8 unchanged.
      flips: True (or "both"): random horizontal and vertical flips; "horizontal": x-flips only
        (StyleGAN's --mirror). rot90: random multiples of 90° (square images).
      shuffle_buffer: records in the shuffle buffer (0 = no shuffling; file order is then fixed).
      repeat: repeat forever (a new file order and shuffle each epoch).
      batch_size: None → unbatched elements.
      seed: makes shuffling and augmentation reproducible.
      class_filter: int or iterable of labels to keep.
      num_workers, worker_index: multi-worker input sharding BY FILE (worker i reads shards
        i, i+n, ...); UserError when there are fewer shards than workers.
      with_meta: yield dicts {image, label, key, group, source} instead of (image, label).
      check: manifest check level (see ``manifest.load_manifest``): shards exist with their sizes.

    Yields (image float32 [B,H,W,C], label int32 [B]) or the dict of ``with_meta``.
    """
    m = load_manifest(data_dir, check=check)
    info = split_info(m, split)
    files = split_shard_paths(m, split)
    h, w, c = m["image_shape"]
    encoding = m["encoding"]
    dst_hw = _target_shape((h, w), resolution)
    _check_resolution(resize_mode, (h, w), dst_hw, data_dir)
    if flips not in (False, True, None, "both", "horizontal"):
        raise ValueError(f"flips={flips!r}: expected True, False, 'both' or 'horizontal'")
    if rot90 and dst_hw[0] != dst_hw[1]:
        raise UserError(f"{data_dir}: rot90 needs square images, target is {dst_hw}")
    if num_workers < 1 or not 0 <= worker_index < num_workers:
        raise ValueError(f"worker_index={worker_index} num_workers={num_workers}")
    if num_workers > 1:
        if len(files) < num_workers:
            raise UserError(f"{data_dir}: split '{split}' has {len(files)} shard(s), fewer than the "
                            f"{num_workers} workers; rewrite it with a smaller --shard_size "
                            f"(it holds {info['num_examples']} examples)")
        files = files[worker_index::num_workers]
    if not files:
        raise UserError(f"{data_dir}: split '{split}' has no examples")
    if deterministic is None:
        deterministic = seed is not None or not shuffle_buffer

    opts = tf.data.Options()
    opts.deterministic = bool(deterministic)
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF

    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_buffer and len(files) > 1:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if len(files) > 1:
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), num_parallel_reads),
                           block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
                           deterministic=bool(deterministic))
    else:
        ds = tf.data.TFRecordDataset(files)
    if shuffle_buffer:
        ds = ds.shuffle(int(shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    # Everything after the record shuffle works on batches: one batched parse, one decode call for
    # the batch (schema.decode_images), resolution, augmentation and scaling as whole-batch ops.
    # Per-element maps cost ~2x the CPU for 96x96 PNGs (benchmarks/bench_pipeline.py). Without
    # batch_size the batches are internal and unbatched at the end. A class filter needs the label
    # first, so then records are parsed one by one before batching.
    parsed = class_filter is not None
    if parsed:
        keep = tf.constant(sorted({int(class_filter)} if np.isscalar(class_filter)
                                  else {int(k) for k in class_filter}), tf.int64)
        ds = ds.map(schema.parse_example, num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=deterministic)
        ds = ds.filter(lambda ex: tf.reduce_any(tf.equal(ex["label"], keep)))
    if batch_size:
        ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)
    else:
        ds = ds.batch(INTERNAL_BATCH)

    augment = flips or rot90
    if augment:
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed).batch(2)))

    def _map(rec, rnd_pair=None):
        ex = rec if parsed else schema.parse_example(rec)
        img = schema.decode_images(ex["image"], encoding, (h, w, c))
        if pixel_range is not None and resize_mode == "resize":
            img = tf.cast(img, tf.float32)  # resize in float; round only for uint8 output
        img = map_resolution(img, (h, w), dst_hw, resize_mode)
        if augment:
            img = _augment(img, tf.cast(rnd_pair % (2 ** 31 - 3), tf.int32), flips, rot90)
        img = _scale(img, pixel_range)
        label = tf.cast(ex["label"], tf.int32)
        if with_meta:
            return {"image": img, "label": label, "key": ex["key"], "group": ex["group"],
                    "source": ex["source"]}
        return img, label

    ds = ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if not batch_size:
        ds = ds.unbatch()
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.with_options(opts)


def mix(real_ds, synthetic_ds, ratio, seed=None, max_denominator=1000):
    """Interleave two datasets of like elements so that exactly ``ratio`` of them are synthetic.

    ``ratio`` is approximated by p/q (q ≤ ``max_denominator``); every consecutive block of q
    elements holds exactly p synthetic ones, at positions shuffled per block (seeded), so the
    long-run fraction is exact. Mix unbatched datasets and batch afterwards. The mix ends when the
    dataset that is asked for next is exhausted; repeat both for training. ``ratio`` 0 or 1 return
    one input unchanged.
    """
    ratio = float(ratio)
    if not 0.0 <= ratio <= 1.0:
        raise UserError(f"mix ratio {ratio}: must be within [0, 1]")
    if ratio == 0.0:
        return real_ds
    if ratio == 1.0:
        return synthetic_ds
    frac = fractions.Fraction(ratio).limit_denominator(max_denominator)
    p, q = frac.numerator, frac.denominator
    base = tf.constant([1] * p + [0] * (q - p), tf.int64)
    blocks = tf.data.Dataset.random(seed=seed).map(
        lambda s: tf.random.experimental.stateless_shuffle(
            base, seed=tf.stack([s % (2 ** 31 - 1), s // (2 ** 31 - 1)])))
    choice = blocks.unbatch()
    return tf.data.Dataset.choose_from_datasets([real_ds, synthetic_ds], choice,
                                                stop_on_empty_dataset=True)


def read_images(data_dir, split="train", *, resolution=None, resize_mode="crop", limit=None,
                class_filter=None, batch_size=256):
    """uint8 images [N, H, W, C] of one split in file order (the first ``limit``), as
    ``make_dataset`` maps them (``resolution``, ``resize_mode``); UserError when there are none."""
    ds = make_dataset(data_dir, split, resolution=resolution, resize_mode=resize_mode,
                      pixel_range=None, batch_size=batch_size, class_filter=class_filter,
                      deterministic=True)
    out, n = [], 0
    for x, _ in ds:
        out.append(x.numpy())
        n += len(out[-1])
        if limit is not None and n >= limit:
            break
    if not out:
        what = "" if class_filter is None else f" (class {class_filter})"
        raise UserError(f"{data_dir}: split {split!r}{what} is empty")
    x = np.concatenate(out)
    return x[:limit] if limit is not None else x
