"""Throughput of the ADA augment pipe (images/s), forward and forward+backward, jit on and off.

    PYTHONPATH=. python benchmarks/bench_augment.py [--pipe bgc] [--batch 32] [--res 32,64] [--p 1.0] [--reps 10]

Prints one JSON object. p = 1 is the worst case (every op applied to every image, so the geometric
resampling always runs); at p = 0 the pipe only draws random numbers and selects.
"""
import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

from histaug_tf.gan.augment import make_augment_pipe  # noqa: E402


def _time(fn, x, reps):
    fn(x).numpy()  # trace / compile
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn(x)
    out.numpy()
    return (time.perf_counter() - t0) / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipe", default="bgc")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--res", default="32,64")
    ap.add_argument("--p", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    result = {"pipe": args.pipe, "batch": args.batch, "p": args.p, "unit": "images/s",
              "device": "gpu" if tf.config.list_logical_devices("GPU") else "cpu", "cpu_count": os.cpu_count()}
    for res in [int(r) for r in args.res.split(",")]:
        pipe = make_augment_pipe(args.pipe, p=args.p, seed=0)
        x = tf.random.uniform([args.batch, res, res, 3], -1, 1)

        def fwd(x):
            return pipe(x)

        def fwd_bwd(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.reduce_sum(tf.square(pipe(x)))
            return tape.gradient(y, x)

        for jit in (False, True):
            for name, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
                sec = _time(tf.function(fn, jit_compile=jit), x, args.reps)
                result[f"{res}px/{'xla' if jit else 'graph'}/{name}"] = round(args.batch / sec, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
