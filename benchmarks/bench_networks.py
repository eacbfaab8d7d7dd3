"""Throughput of the StyleGAN2 networks: G forward, and G+D forward+backward, per preset.

Prints one JSON object: for each preset and jit mode (XLA on / plain tf.function),
``g_forward_img_s`` (G(z) with random noise, inference) and ``gd_train_img_s`` (one G loss
+ one D loss forward and backward: D(G(z)) and D(x_real), gradients w.r.t. all weights; no
regularisers, no optimizer update). Warm-up (tracing / compilation) is excluded and reported
separately. ``*_cpu_s_per_img`` is process CPU time per image (less sensitive to other load on
the machine than the wall-clock images/s); ``load_avg_1min`` records that load.

    python benchmarks/bench_networks.py                      # tiny, demo, paper256 (batch 2)
    python benchmarks/bench_networks.py --presets demo --batch 16 --iters 5
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from histaug_tf.gan.networks import Discriminator, Generator, count_params  # noqa: E402
from histaug_tf.gan.presets import get_preset  # noqa: E402
from histaug_tf.ops.upfirdn2d import xla_function  # noqa: E402

DEFAULT_RES = {"tiny": 32, "demo": 32, "cifar": 32}


def _time(fn, iters, *args):
    """(warm-up wall s, wall s per call, process CPU s per call)."""
    t0 = time.perf_counter()
    out = fn(*args)
    tf.nest.map_structure(lambda t: t.numpy(), out)
    warm = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
        out = fn(*args)
    tf.nest.map_structure(lambda t: t.numpy(), out)
    return warm, (time.perf_counter() - t0) / iters, (time.process_time() - c0) / iters


def bench(preset, res, batch, iters, jit, c_dim=0):
    p = get_preset(preset, res, c_dim=c_dim, mixed_precision=False)
    G = Generator(**p["G_kwargs"])
    D = Discriminator(**p["D_kwargs"])
    z = tf.random.normal([batch, G.z_dim])
    c = tf.one_hot(tf.range(batch) % max(c_dim, 1), c_dim) if c_dim else None
    real = tf.random.uniform([batch, res, res, G.img_channels], -1, 1)

    compile_ = xla_function if jit else tf.function

    @compile_
    def g_forward(z, c):
        return G(z, c, noise_mode="random")

    @compile_
    def gd_step(z, c, real):
        with tf.GradientTape(persistent=True) as tape:
            fake = G(z, c)
            g_loss = tf.reduce_mean(tf.nn.softplus(-D(fake, c)))
            d_loss = tf.reduce_mean(tf.nn.softplus(D(tf.stop_gradient(fake), c))) \
                + tf.reduce_mean(tf.nn.softplus(-D(real, c)))
        gg = tape.gradient(g_loss, G.trainable_variables)
        dg = tape.gradient(d_loss, D.trainable_variables)
        del tape
        # Reduce every gradient so that none of the backward pass is pruned from the graph.
        return g_loss, d_loss, tf.add_n([tf.reduce_sum(g) for g in gg + dg])

    warm_g, t_g, cpu_g = _time(g_forward, iters, z, c)
    warm_t, t_t, cpu_t = _time(gd_step, iters, z, c, real)
    return dict(preset=preset, resolution=res, batch=batch, jit=jit, iters=iters,
                G_params=count_params(G), D_params=count_params(D),
                g_forward_img_s=round(batch / t_g, 2), g_forward_warmup_s=round(warm_g, 2),
                g_forward_cpu_s_per_img=round(cpu_g / batch, 4),
                gd_train_img_s=round(batch / t_t, 2), gd_train_warmup_s=round(warm_t, 2),
                gd_train_cpu_s_per_img=round(cpu_t / batch, 4),
                load_avg_1min=round(os.getloadavg()[0], 1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="tiny,demo,paper256")
    ap.add_argument("--batch", type=int, default=None,
                    help="batch size (default: 8 for tiny/demo, 2 for the others)")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--jit", default="on,off", help="on, off or on,off")
    ap.add_argument("--resolution", type=int, default=None)
    args = ap.parse_args()
    results = []
    for preset in args.presets.split(","):
        res = args.resolution or DEFAULT_RES.get(preset, 256)
        batch = args.batch or (8 if preset in ("tiny", "demo") else 2)
        for j in args.jit.split(","):
            results.append(bench(preset, res, batch, args.iters, j == "on"))
    print(json.dumps(dict(benchmark="networks", tensorflow=tf.__version__,
                          machine=platform.machine(), cpus=os.cpu_count(),
                          gpus=len(tf.config.list_physical_devices("GPU")), results=results)))


if __name__ == "__main__":
    main()
