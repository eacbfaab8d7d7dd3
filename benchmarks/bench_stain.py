"""Throughput of the classifier's colour augmentation (classifier/stain.py), images/s per
``--augment`` spec, on whole batches in a tf.function (as the training stream applies it).

    PYTHONPATH=. python benchmarks/bench_stain.py [--batch 64] [--res 32,96] [--reps 20]

Prints one JSON object.
"""
import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

from histaug_tf.classifier import stain  # noqa: E402

SPECS = ("hed_light", "hsv_light", "bc", "hed_light,hsv_light,bc")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--res", default="32,96")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    out = {"batch": args.batch, "unit": "images/s", "cpu_count": os.cpu_count(),
           "device": "gpu" if tf.config.list_logical_devices("GPU") else "cpu", "results": {}}
    for res in [int(r) for r in args.res.split(",")]:
        x = tf.random.uniform([args.batch, res, res, 3], -1, 1)
        for spec in SPECS:
            sp = stain.parse_augment(spec)
            fn = tf.function(lambda x, i, sp=sp: stain.colour_augment(
                x, tf.stack([tf.constant(0, tf.int64), i]), sp))
            fn(x, tf.constant(0, tf.int64)).numpy()  # trace
            times = []
            for r in range(args.reps):
                t0 = time.perf_counter()
                fn(x, tf.constant(r, tf.int64)).numpy()
                times.append(time.perf_counter() - t0)
            times.sort()
            out["results"][f"{spec}@{res}"] = round(args.batch / times[len(times) // 2], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
