"""The resampling convolutions of StyleGAN2 under XLA: TensorFlow's ops against the polyphase ones.

    python benchmarks/bench_conv.py [--batch=32] [--channels=128] [--res=32] [--threads=2]

Prints one JSON object: milliseconds per call (and GFLOP/s of the convolution arithmetic) of
* ``up``: the 3x3 stride-2 transposed convolution of the G's ``up=2`` layers (res/2 -> res),
* ``down``: the 3x3 stride-2 convolution of the D's ``down=2`` layers (res -> res/2, padded),
* ``conv``: a 3x3 stride-1 convolution at res/2 with the same arithmetic (the yardstick),
each as the forward pass alone, forward + input gradient, forward + filter gradient, compiled with
``jit_compile=True``, once with TensorFlow's ops (``native``) and once with
``histaug_tf.ops.polyphase`` (``polyphase``). Arithmetic counted: 2 * 9 * C * C per input pixel of
``up`` / output pixel of the others, for the forward pass; a gradient pass counts the same again.
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()

    import tensorflow as tf

    from histaug_tf.ops import polyphase as pp

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    b, c, r = args.batch, args.channels, args.res
    lo = r // 2
    x_lo = tf.random.normal([b, lo, lo, c], seed=1)
    x_hi = tf.random.normal([b, r, r, c], seed=2)
    w = tf.random.normal([3, 3, c, c], seed=3)
    flops = 2.0 * b * lo * lo * 9 * c * c
    pad = ((1, 1), (1, 1))
    ops = {
        "up": {"native": lambda x, w: tf.nn.conv2d_transpose(
                   x, w, [b, 2 * lo + 1, 2 * lo + 1, c], 2, "VALID"),
               "polyphase": lambda x, w: pp.conv2d_transpose(x, w, 2)},
        "down": {"native": lambda x, w: tf.nn.conv2d(x, w, 2, [[0, 0], [1, 1], [1, 1], [0, 0]]),
                 "polyphase": lambda x, w: pp.strided_conv2d(x, w, 2, pad)},
        "conv": {"native": lambda x, w: tf.nn.conv2d(x, w, 1, "SAME")},
    }
    inputs = {"up": x_lo, "down": x_hi, "conv": x_lo}

    def passes(fn):
        def grad(wrt):
            def g(x, w):
                with tf.GradientTape() as tape:
                    tape.watch([x, w])
                    y = fn(x, w)
                    loss = tf.reduce_sum(y * y)
                return tape.gradient(loss, [x, w][wrt])
            return g
        return {"forward": (fn, 1), "forward+dx": (grad(0), 2), "forward+dw": (grad(1), 2)}

    def timed(fn, x):
        f = tf.function(fn, jit_compile=True)
        f(x, w).numpy()
        f(x, w).numpy()
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            out = f(x, w)
        out.numpy()
        return (time.perf_counter() - t0) / args.repeats

    results = {}
    for name, impls in ops.items():
        for impl, fn in impls.items():
            for pname, (pfn, mult) in passes(fn).items():
                s = timed(pfn, inputs[name])
                results.setdefault(name, {}).setdefault(impl, {})[pname] = {
                    "ms": round(1e3 * s, 2), "gflops_per_s": round(mult * flops / s / 1e9, 1)}
    print(json.dumps({"benchmark": "conv", "tensorflow": tf.__version__, "batch": b,
                      "channels": c, "res": r, "threads": args.threads,
                      "load_avg_1m": round(os.getloadavg()[0], 2), "results": results}, indent=1))


if __name__ == "__main__":
    main()
