"""Generation throughput: images/s of the Synthesizer (latents from seeds → G → uint8) per preset,
with and without XLA. Random-weight networks (speed does not depend on the weights).

    python benchmarks/bench_generate.py [--presets=tiny,demo] [--resolution=32] [--batch=32]
                                        [--seconds=10]

Prints one JSON object.
"""
import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def bench_one(cfg, resolution, batch, jit, seconds, c_dim=2):
    import keras
    import numpy as np

    from histaug_tf.apps.generate import Synthesizer
    from histaug_tf.gan.networks import Generator
    from histaug_tf.gan.presets import get_preset

    keras.utils.set_random_seed(0)
    G = Generator(**get_preset(cfg, resolution, c_dim=c_dim, mixed_precision=False)["G_kwargs"])
    synth = Synthesizer(G=G, noise_mode="const", batch_size=batch, jit_compile=jit)
    labels = np.arange(batch) % c_dim
    t0 = time.perf_counter()
    synth(np.arange(batch), labels)  # trace / compile
    compile_s = time.perf_counter() - t0
    n, t0 = 0, time.perf_counter()
    while True:
        synth(np.arange(n, n + batch), labels)
        n += batch
        if time.perf_counter() - t0 >= seconds and n >= 3 * batch:
            break
    dt = time.perf_counter() - t0
    return {"preset": cfg, "resolution": resolution, "jit": jit, "batch": batch,
            "params": int(sum(np.prod(v.shape) for v in G.trainable_variables)),
            "images": n, "seconds": round(dt, 3), "images_per_second": round(n / dt, 2),
            "first_call_seconds": round(compile_s, 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="tiny,demo")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--jit", default="off,on")
    a = ap.parse_args()
    results = []
    for cfg in a.presets.split(","):
        for j in a.jit.split(","):
            results.append(bench_one(cfg, a.resolution, a.batch, j == "on", a.seconds))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps({"benchmark": "generate", "what": "seeds -> latents -> G(z, c) -> uint8, "
                      "conditional c_dim=2, noise const, random weights",
                      "results": results, "cpu_count": os.cpu_count(), "load_avg_1min": load,
                      "machine": platform.machine()}))


if __name__ == "__main__":
    main()
