"""Training throughput of the StyleGAN2-ADA trainer: images/s and sec/kimg per preset, jit on/off.

    python benchmarks/bench_train.py                       # tiny, demo (jit off and on), paper256
    python benchmarks/bench_train.py --presets=demo --batch=32 --jit=off --steps=16

Prints one JSON object. Each configuration runs the real trainer step (Gmain, Greg every 4,
Dmain, Dreg every 16, G EMA, ADA bookkeeping) on random in-memory reals (the input pipeline is
benchmarked by the data developer). After a warm-up step (tracing / XLA compilation, reported as
``warmup_s``) it times ``--steps`` steps starting at step 1, so that 16 steps contain the same
4 path-length and 1 R1 phases per 16 steps as a long run. Augmentation: the bgc pipe at a fixed
p (default 0.2), as in the NVlabs reference measurement quoted in docs/speed.md.
"""
import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (preset, resolution, batch) defaults
DEFAULTS = {"tiny": (16, 8), "demo": (32, 32), "paper256": (256, 2)}


def bench_one(preset_name, resolution, batch, jit, steps, p, augpipe, seed=0):
    import numpy as np
    import tensorflow as tf

    from histaug_tf.gan import augment
    from histaug_tf.gan.launch import networks_builder
    from histaug_tf.gan.presets import get_preset
    from histaug_tf.gan.trainer import Trainer

    preset = get_preset(preset_name, resolution, gpus=1, c_dim=0, img_channels=3,
                        mixed_precision=False)

    build = networks_builder(preset)
    make_pipe = lambda: augment.make_augment_pipe(augpipe, p=p, seed=seed)  # noqa: E731
    aug_name = f"{augpipe}@p={p}"
    reals = np.random.RandomState(seed).uniform(-1, 1, (batch, resolution, resolution, 3))
    reals = reals.astype(np.float32)

    def input_fn(nw, wi, wb, s):
        ds = tf.data.Dataset.from_tensors((reals[:wb], np.zeros([wb], np.int32)))
        return ds.repeat()

    lk = preset["loss_kwargs"]
    with tempfile.TemporaryDirectory() as run_dir:
        t = Trainer(strategy=tf.distribute.get_strategy(), build_networks=build,
                    input_fn=input_fn, run_dir=run_dir, batch=batch, make_augment_pipe=make_pipe,
                    G_lr=preset["G_lr"], D_lr=preset["D_lr"], r1_gamma=preset["gamma"],
                    pl_weight=lk["pl_weight"], style_mixing_prob=lk["style_mixing_prob"],
                    ema_kimg=preset["ema_kimg"], ema_rampup=preset["ema_rampup"],
                    augment_p=p if make_pipe else 0.0, ada_target=None, jit=jit, seed=seed,
                    log=lambda *a, **k: None, tensorboard=False)
        t0 = time.perf_counter()
        t.train_step()  # step 0: all four phases (tracing / compilation)
        _ = t.G.trainable_variables[0].numpy()
        warm = time.perf_counter() - t0
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        for _ in range(steps):
            t.train_step()
        _ = t.G_ema.trainable_variables[0].numpy()
        dt = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    n = steps * batch
    return {
        "preset": preset_name, "resolution": resolution, "batch": batch, "jit": bool(jit),
        "augment": aug_name, "steps": steps, "images": n, "seconds": round(dt, 3),
        "images_per_sec": round(n / dt, 3), "sec_per_kimg": round(dt / n * 1000, 2),
        "warmup_s": round(warm, 2),
        # process CPU time (user + sys): less sensitive than wall time to other load on the host
        "cpu_sec_per_kimg": round(cpu / n * 1000, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "params_G": int(sum(np.prod(v.shape) for v in t.G.trainable_variables)),
        "params_D": int(sum(np.prod(v.shape) for v in t.D.trainable_variables)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="tiny,demo,paper256")
    ap.add_argument("--jit", default="off,on", help="off, on, or off,on")
    ap.add_argument("--batch", type=int, default=None, help="override every preset's batch")
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--p", type=float, default=0.2)
    ap.add_argument("--augpipe", default="bgc")
    ap.add_argument("--threads", type=int, default=None, help="intra/inter op threads")
    ap.add_argument("--paper256_jit", action="store_true",
                    help="also compile paper256 with XLA (slow to compile on CPU)")
    args = ap.parse_args()
    import tensorflow as tf
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    results = []
    for name in [s for s in args.presets.split(",") if s]:
        res, batch = DEFAULTS.get(name, (32, 16))
        res = args.resolution or res
        batch = args.batch or batch
        for j in [s for s in args.jit.split(",") if s]:
            jit = j == "on"
            if name == "paper256" and jit and not args.paper256_jit:
                continue
            steps = args.steps if name != "paper256" else min(args.steps, 4)
            results.append(bench_one(name, res, batch, jit, steps, args.p, args.augpipe))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    out = {
        "benchmark": "train", "tensorflow": tf.__version__, "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "threads": args.threads,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "results": results,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
