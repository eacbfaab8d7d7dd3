"""Conversion benchmark: PCAM-format 96×96 patches (.h5) → PNG TFRecords with prepare_data.

Writes the six PCAM files (train = --num patches of realistic synthetic tissue, valid/test small)
into a temporary directory (not timed), then runs ``python -m histaug_tf.prepare_data`` as a
subprocess and samples the RSS of it and its encoder processes. Prints one JSON object:
patches/s over the whole conversion (wall clock, including start-up, sha256 and manifest) and peak
RSS (main process; the sum over main + workers). Example:

    python benchmarks/bench_prepare.py --num=20000
    python benchmarks/bench_prepare.py --num=100000
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from _bench_data import TreeRssSampler, base_patches, machine_note, variant_chunk  # noqa: E402


def write_pcam(d, num, small=256, chunk=2048):
    import h5py
    import numpy as np

    base, labels = base_patches(256, 96)
    for split, n in (("train", num), ("valid", small), ("test", small)):
        xp = os.path.join(d, f"camelyonpatch_level_2_split_{split}_x.h5")
        yp = os.path.join(d, f"camelyonpatch_level_2_split_{split}_y.h5")
        with h5py.File(xp, "w") as fx, h5py.File(yp, "w") as fy:
            x = fx.create_dataset("x", (n, 96, 96, 3), np.uint8, chunks=(32, 96, 96, 3))
            y = fy.create_dataset("y", (n, 1, 1, 1), np.uint8)
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                imgs, labs = variant_chunk(base, labels, s, e, seed=hash(split) % 1000)
                x[s:e] = imgs
                y[s:e] = labs.reshape(-1, 1, 1, 1)
    return num + 2 * small


def generator_speed():
    """synthetic_tissue.render_patch patches per minute on one core (this process), per size."""
    from histaug_tf.data.synthetic_tissue import render_patch

    res = {}
    for size, n in ((64, 200), (96, 100)):
        c0 = time.process_time()
        t0 = time.perf_counter()
        for i in range(n):
            render_patch(i, i % 2, size)
        res[f"synthetic_tissue_{size}px_per_min_cpu"] = round(60 * n / (time.process_time() - c0))
        res[f"synthetic_tissue_{size}px_per_min_wall"] = round(60 * n / (time.perf_counter() - t0))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num", type=int, default=20000, help="train patches")
    ap.add_argument("--encoding", default="png")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--shard_size", type=int, default=4096)
    ap.add_argument("--tmp", default=None, help="scratch directory (default: system temp)")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench_prepare_", dir=args.tmp)
    try:
        src, out = os.path.join(tmp, "src"), os.path.join(tmp, "out")
        os.makedirs(src)
        t0 = time.time()
        total = write_pcam(src, args.num)
        gen_s = time.time() - t0
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   TF_CPP_MIN_LOG_LEVEL="2", HISTAUG_QUIET="1")
        cmd = [sys.executable, "-m", "histaug_tf.prepare_data", "--dataset=pcam", f"--src={src}",
               f"--out={out}", f"--encoding={args.encoding}", f"--workers={args.workers}",
               f"--shard_size={args.shard_size}"]
        load_before = machine_note()
        cpu0 = os.times()
        t0 = time.time()
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sampler = TreeRssSampler(p.pid).start()
        stdout, stderr = p.communicate()
        wall = time.time() - t0
        sampler.stop()
        cpu1 = os.times()
        if p.returncode != 0:
            print(stderr, file=sys.stderr)
            raise SystemExit(f"prepare_data failed with exit code {p.returncode}")
        m = json.load(open(os.path.join(out, "manifest.json")))
        n = sum(v["num_examples"] for v in m["splits"].values())
        assert n == total, (n, total)
        out_bytes = sum(s["num_bytes"] for v in m["splits"].values() for s in v["shards"])
        cpu_children = ((cpu1.children_user + cpu1.children_system)
                        - (cpu0.children_user + cpu0.children_system))
        print(json.dumps({
            "benchmark": "prepare_data pcam 96x96",
            "num_patches": n,
            "encoding": args.encoding,
            "workers": args.workers,
            "seconds": round(wall, 2),
            "patches_per_s": round(n / wall, 1),
            "cpu_seconds_children": round(cpu_children, 2),
            "cpu_ms_per_patch": round(1000 * cpu_children / n, 3),
            "peak_rss_main_mb": round(sampler.peak_main / 2 ** 20, 1),
            "peak_rss_largest_process_mb": round(sampler.peak_single / 2 ** 20, 1),
            "peak_rss_tree_mb": round(sampler.peak_tree / 2 ** 20, 1),
            "input_h5_mb": round(sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src)) / 2 ** 20, 1),
            "output_mb": round(out_bytes / 2 ** 20, 1),
            "bytes_per_patch": round(out_bytes / n),
            "input_generation_s": round(gen_s, 1),
            **generator_speed(),
            "machine_before": load_before,
            "machine_after": machine_note()["load_avg_1_5_15"],
        }))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
