"""Peak host memory of one training step at several --batch_gpu values (one fresh process each).

    python benchmarks/bench_batch_gpu_memory.py --preset=demo --resolution=32 --batch=64 \
        --batch_gpu=64,8

Each child builds the preset's real networks and a Trainer (jit off, CPU), reads its RSS, runs
step 0 (Gmain, Greg, Dmain, Dreg: all four phases, including the tracing of their graphs) and reads
the peak RSS (``ru_maxrss``). Prints one JSON object per value: rss before the step, peak after,
their difference (GB) and the step's wall time. Smaller rounds keep fewer activations alive at a
time; the tracing of R unrolled rounds costs a little more graph memory.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rss_gb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def child(a):
    import tensorflow as tf

    from histaug_tf.apps.train_gan import networks_builder
    from histaug_tf.gan.presets import get_preset
    from histaug_tf.gan.config import TrainingConfig
    from histaug_tf.gan.trainer import Trainer

    preset = get_preset(a.preset, a.resolution, mixed_precision=False)
    res = a.resolution

    def input_fn(nw, wi, worker_batch, seed):
        x = tf.random.stateless_uniform([worker_batch, res, res, 3], [seed, 1], -1.0, 1.0)
        return tf.data.Dataset.from_tensors((x, tf.zeros([worker_batch], tf.int32))).repeat()

    with tempfile.TemporaryDirectory() as d:
        config = TrainingConfig.from_flat(outdir=d, batch=a.batch, batch_gpu=a.child_batch_gpu,
                                          gamma=preset["gamma"], kimg=1)
        t = Trainer(config, strategy=tf.distribute.get_strategy(),
                    build_networks=networks_builder(preset), input_fn=input_fn,
                    log=lambda *x, **k: None)
        before = _rss_gb()
        t0 = time.time()
        t.train_step()
        sec = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(dict(preset=a.preset, resolution=res, batch=a.batch,
                          batch_gpu=a.child_batch_gpu, rounds=t.rounds,
                          rss_before_step_gb=round(before, 3), peak_rss_gb=round(peak, 3),
                          step_peak_minus_before_gb=round(peak - before, 3),
                          step_sec=round(sec, 1))), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="demo")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batch_gpu", default="64,8")
    p.add_argument("--child_batch_gpu", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child_batch_gpu is not None:
        return child(a)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    for bg in (int(v) for v in a.batch_gpu.split(",")):
        r = subprocess.run([sys.executable, os.path.abspath(__file__), f"--preset={a.preset}",
                            f"--resolution={a.resolution}", f"--batch={a.batch}",
                            f"--child_batch_gpu={bg}"], env=env, capture_output=True, text=True)
        out = [x for x in r.stdout.splitlines() if x.startswith("{")]
        if r.returncode or not out:
            sys.exit(f"error: batch_gpu={bg}: the child failed: {r.stderr.strip()[-500:]}")
        print(out[-1], flush=True)


if __name__ == "__main__":
    main()
