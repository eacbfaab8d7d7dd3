"""Compare FIR implementations for upfirdn2d on CPU: shifted slices (impl='slices') vs depthwise conv
(impl='conv') vs conv2d with channels folded into batch (benchmark-only variant); eager and XLA; forward+backward. Prints one JSON object.

    PYTHONPATH=. python benchmarks/bench_upfirdn2d.py [--quick]
"""
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

from histaug_tf.ops import upfirdn2d as U  # noqa: E402


def _prep(x, f, up, down, padding, gain):
    upx, upy = U._parse_scaling(up)
    x = U._upsample_zeros(x, upx, upy)
    x = U._pad_crop(x, *U._parse_padding(padding))
    f = tf.cast(f * (gain ** (f.shape.rank / 2)), x.dtype)
    return x, tf.reverse(f, axis=list(range(f.shape.rank)))


def upfirdn_fold(x, f, up=1, down=1, padding=0, gain=1):
    x, f = _prep(x, f, up, down, padding, gain)
    n, h, w, c = x.shape
    x = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [n * c, h, w, 1])
    if f.shape.rank == 2:
        x = tf.nn.conv2d(x, f[:, :, None, None], [1, down, down, 1], "VALID")
    else:
        x = tf.nn.conv2d(x, f[None, :, None, None], 1, "VALID")
        x = tf.nn.conv2d(x, f[:, None, None, None], 1, "VALID")[:, ::down, ::down]
    _, oh, ow, _ = x.shape
    return tf.transpose(tf.reshape(x, [n, c, oh, ow]), [0, 2, 3, 1])


def ours_slices(x, f, up=1, down=1, padding=0, gain=1):
    return U.upfirdn2d(x, f, up=up, down=down, padding=padding, gain=gain, impl="slices")


def ours_conv(x, f, up=1, down=1, padding=0, gain=1):
    return U.upfirdn2d(x, f, up=up, down=down, padding=padding, gain=gain, impl="conv")


def bench(impl, jit, case, reps):
    x = tf.random.normal(case["shape"])
    f = U.setup_filter([1, 3, 3, 1], separable=case["separable"])

    def step(x):
        with tf.GradientTape() as t:
            t.watch(x)
            y = impl(x, f, up=case["up"], down=case["down"], padding=case["padding"], gain=case["up"] ** 2)
            loss = tf.reduce_sum(y * y)
        return t.gradient(loss, x)

    fn = tf.function(step, jit_compile=True) if jit else step
    fn(x).numpy()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(x).numpy()
    return (time.perf_counter() - t0) / reps * 1e3


def main():
    quick = "--quick" in sys.argv
    cases = {
        "down2_32px_128ch": dict(shape=[16, 32, 32, 128], up=1, down=2, padding=1),
        "up2_16px_128ch": dict(shape=[16, 16, 16, 128], up=2, down=1, padding=[2, 1, 2, 1]),
        "up2_32px_3ch": dict(shape=[16, 32, 32, 3], up=2, down=1, padding=[2, 1, 2, 1]),
    }
    impls = {"slices": ours_slices, "depthwise": ours_conv, "fold_conv2d": upfirdn_fold}
    out = {"unit": "ms per forward+backward", "threads": tf.config.threading.get_intra_op_parallelism_threads()}
    for cname, case in cases.items():
        for sep in (False, True):
            case = dict(case, separable=sep)
            for jit in (False, True):
                for iname, impl in impls.items():
                    key = f"{cname}/{'sep' if sep else '2d'}/{'xla' if jit else 'eager'}/{iname}"
                    out[key] = round(bench(impl, jit, case, 3 if quick else 10), 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
