"""Time to compute FID for N images: FID-Inception pool3 features (the inception-2015-12-05
network of ``histaug_tf.metrics.inception``, at 299 px; random weights cost the same as the real
ones, or pass ``--inception_weights=PATH`` to pytorch-fid's .pth) of N generated-size images,
streamed in batches, plus the 2048-d Frechet distance.

    python benchmarks/bench_fid.py [--num=10000] [--image_size=32] [--batch=64] [--jit]

Prints one JSON object. ``--num`` smaller than 10,000 also reports the linear extrapolation to
10,000 (feature extraction is linear in N; the Frechet distance does not depend on N).
"""
import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--num", type=int, default=10000)
    ap.add_argument("--image_size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--inception_weights", default="random")
    ap.add_argument("--jit", action="store_true")
    a = ap.parse_args()

    import numpy as np

    from histaug_tf.metrics import stats
    from histaug_tf.metrics.inception import FIDInception

    t0 = time.perf_counter()
    ext = FIDInception(a.inception_weights, seed=0, batch_size=a.batch, jit_compile=a.jit)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    st = stats.FeatureStats()
    x = rng.integers(0, 256, (a.batch, a.image_size, a.image_size, 3)).astype(np.float32) / 127.5 - 1
    t0 = time.perf_counter()
    ext(x)  # trace
    trace_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    done = 0
    while done < a.num:
        k = min(a.batch, a.num - done)
        st.append(ext(x[:k]))
        done += k
    feat_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mu, sigma = st.mean_cov()
    fid = stats.frechet_distance(mu, sigma, mu + 0.1, sigma)
    fid_s = time.perf_counter() - t0
    out = {"benchmark": "fid", "num_images": a.num, "image_size": a.image_size,
           "extractor": ext.identity, "batch": a.batch, "jit": a.jit,
           "build_seconds": round(build_s, 2), "first_batch_seconds": round(trace_s, 2),
           "feature_seconds": round(feat_s, 2), "feature_images_per_second": round(a.num / feat_s, 2),
           "frechet_seconds": round(fid_s, 2), "total_seconds": round(feat_s + fid_s, 2),
           "fid_value_check": round(fid, 3), "cpu_count": os.cpu_count(),
           "load_avg_1min": os.getloadavg()[0], "machine": platform.machine()}
    if a.num != 10000:
        out["extrapolated_total_seconds_10k"] = round(feat_s * 10000 / a.num + fid_s, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
