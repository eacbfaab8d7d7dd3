"""Input-pipeline benchmark: decoded 96×96 images/s from ``pipeline.make_dataset`` at batch 256.

Writes a dataset of --num distinct realistic 96×96 patches (PNG, and raw for comparison) into a
temporary directory (not timed), then iterates ``make_dataset(..., batch_size=256, repeat=True,
pixel_range=(-1, 1))`` for --batches batches after --warmup batches and reports images/s (float32
images in [-1, 1] delivered to Python, i.e. read + parse + decode + scale + batch; ``png_uint8``:
the decoded uint8 images, no scaling). Prints one JSON object.

``png_per_element_baseline_*`` is the design the pipeline had before batched decoding (parse,
``tf.io.decode_png`` and scale per element, then batch), rebuilt here so that both are timed in
the same run on the same data.

    python benchmarks/bench_pipeline.py
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from _bench_data import base_patches, machine_note, variant_chunk  # noqa: E402


def build(d, num, encoding, shard_size=1024):
    from histaug_tf.data.writer import DatasetWriter

    base, labels = base_patches(128, 96)
    with DatasetWriter(d, "bench", (96, 96, 3), encoding=encoding, shard_size=shard_size) as w:
        for s in range(0, num, 1024):
            imgs, labs = variant_chunk(base, labels, s, min(num, s + 1024))
            for j, (im, lab) in enumerate(zip(imgs, labs)):
                w.add("train", im, int(lab), f"bench/{s + j}", "train")


def per_element_baseline(d, batch_size):
    """The previous design: one map per element (parse → decode_png → scale), then batch."""
    import tensorflow as tf

    from histaug_tf.data import schema
    from histaug_tf.data.manifest import load_manifest, split_shard_paths

    m = load_manifest(d, check="exists")
    files = split_shard_paths(m, "train")
    h, w, c = m["image_shape"]

    def one(rec):
        ex = schema.parse_example(rec)
        img = schema.decode_image(ex["image"], m["encoding"], (h, w, c))
        return tf.cast(img, tf.float32) * (2 / 255.0) - 1.0, tf.cast(ex["label"], tf.int32)

    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=min(4, len(files)), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.repeat().map(one, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def measure(d, batches, warmup, batch_size, baseline=False, **kw):
    from histaug_tf.data.pipeline import make_dataset

    if baseline:
        ds = per_element_baseline(d, batch_size)
    else:
        kw.setdefault("pixel_range", (-1, 1))
        ds = make_dataset(d, "train", batch_size=batch_size, repeat=True, drop_remainder=True, **kw)
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    c0 = time.process_time()
    t0 = time.perf_counter()
    for _ in range(batches):
        x, _ = next(it)
    _ = x.numpy()
    dt = time.perf_counter() - t0
    n = batches * batch_size
    # CPU time of this process (all tf.data threads) per image: independent of how much of the
    # machine other jobs take; 2 cores / this = the rate an otherwise idle 2-core machine allows.
    return round(n / dt, 1), round((time.process_time() - c0) / n * 1e6, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num", type=int, default=8192)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--batch_size", type=int, default=256)
    args = ap.parse_args()
    import tensorflow as tf  # noqa: F401

    tmp = tempfile.mkdtemp(prefix="bench_pipeline_")
    try:
        res = {"benchmark": "pipeline 96x96", "batch_size": args.batch_size, "num_examples": args.num,
               "batches_timed": args.batches, "machine_before": machine_note()}
        for enc in ("png", "raw"):
            d = os.path.join(tmp, enc)
            build(d, args.num, enc)
            configs = {enc: {}}
            if enc == "png":
                configs["png_shuffle10k_flips_rot90"] = dict(shuffle_buffer=10000, flips=True,
                                                             rot90=True, seed=0)
                configs["png_crop64"] = dict(resolution=64, resize_mode="crop")
                configs["png_uint8"] = dict(pixel_range=None)
                configs["png_per_element_baseline"] = dict(baseline=True)
            for name, kw in configs.items():
                rate, cpu_us = measure(d, args.batches, args.warmup, args.batch_size, **kw)
                res[f"{name}_images_per_s"] = rate
                res[f"{name}_cpu_us_per_image"] = cpu_us
        res["machine_after"] = machine_note()["load_avg_1_5_15"]
        print(json.dumps(res))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
