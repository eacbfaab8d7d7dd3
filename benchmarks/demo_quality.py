"""How far a run's fakes are from the reals, per network snapshot (a cheap progress check).

    python benchmarks/demo_quality.py --run=runs/demo_gan [--n=512]

distance = ||colour moments(fakes) - colour moments(reals)||_2 + MMD^2(features)
* colour moments: per-channel mean and standard deviation of the pixels in [0, 1] (6 numbers);
* MMD^2: unbiased, Gaussian kernel (bandwidth: median pairwise distance of the reals), on the
  64-d features of a fixed random conv net (3 conv 3x3 layers, He-normal weights from seed 0,
  ReLU, 2x average pooling, global average pool) — no downloaded weights.
Reals: the run's dataset (train split) at the run's resolution/resize, the same N images for every
snapshot. Fakes: G_ema of each snapshot, z from a fixed seed, labels as the training set's.
Prints one JSON object with every snapshot's distance and ``ratio_last_first``.
"""
import argparse
import glob
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def random_features(images, seed=0):
    """64-d features of a fixed random conv net; images NHWC in [-1, 1]."""
    import tensorflow as tf
    rnd = np.random.RandomState(seed)
    x = tf.constant(images, tf.float32)
    cin = x.shape[-1]
    for cout in (32, 64, 64):
        w = rnd.randn(3, 3, cin, cout).astype(np.float32) * np.sqrt(2.0 / (9 * cin))
        x = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME"))
        x = tf.nn.avg_pool2d(x, 2, 2, "VALID") if x.shape[1] >= 4 else x
        cin = cout
    return tf.reduce_mean(x, axis=[1, 2]).numpy().astype(np.float64)


def mmd2_unbiased(a, b, bandwidth):
    def k(x, y):
        d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
        return np.exp(-np.maximum(d2, 0) / (2 * bandwidth ** 2))
    m, n = len(a), len(b)
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    return ((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
            - 2 * kab.mean())


def colour_moments(images):
    x = (np.asarray(images, np.float64) + 1) / 2
    return np.concatenate([x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))])


class Reference:
    def __init__(self, reals):
        self.moments = colour_moments(reals)
        self.feats = random_features(reals)
        f = self.feats
        d2 = (f * f).sum(1)[:, None] + (f * f).sum(1)[None, :] - 2 * f @ f.T
        self.bandwidth = float(np.sqrt(np.median(d2[np.triu_indices(len(f), 1)].clip(0))))

    def distance(self, images):
        c = float(np.linalg.norm(colour_moments(images) - self.moments))
        m = float(mmd2_unbiased(random_features(images), self.feats, self.bandwidth))
        return {"colour": c, "mmd2": m, "distance": c + m}


def fakes_from_snapshot(path, n, class_probs, seed=1):
    import tensorflow as tf
    from histaug_tf.gan.snapshot import load_snapshot
    G = load_snapshot(path)["G_ema"]
    rnd = np.random.RandomState(seed)
    z = rnd.randn(n, G.z_dim).astype(np.float32)
    if G.c_dim:
        idx = rnd.choice(G.c_dim, size=n, p=class_probs)
        c = np.eye(G.c_dim, dtype=np.float32)[idx]
    else:
        c = np.zeros([n, 0], np.float32)
    out = [np.asarray(G(tf.constant(z[i:i + 64]), tf.constant(c[i:i + 64]), noise_mode="const"))
           for i in range(0, n, 64)]
    return np.concatenate(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--n", type=int, default=512)
    args = ap.parse_args()
    from histaug_tf.data.pipeline import make_dataset
    from histaug_tf.gan.config import TrainingConfig
    dc = TrainingConfig.from_dict(json.load(open(os.path.join(args.run,
                                                              "training_options.json")))).data
    ds = make_dataset(dc.data, "train", resolution=dc.resolution,
                      resize_mode=dc.resize, class_filter=dc.class_filter,
                      shuffle_buffer=4096, seed=123, batch_size=args.n)
    reals = next(iter(ds))[0].numpy()
    ref = Reference(reals)
    counts = np.asarray(dc.class_counts, np.float64)
    snaps = sorted(glob.glob(os.path.join(args.run, "network-snapshot-*.keras")))
    rows = []
    for s in snaps:
        d = ref.distance(fakes_from_snapshot(s, len(reals), counts / counts.sum()))
        d["snapshot"] = os.path.basename(s)
        rows.append(d)
        print(json.dumps(d), file=sys.stderr, flush=True)
    # a reference floor: another sample of reals
    reals2 = next(iter(make_dataset(dc.data, "train", resolution=dc.resolution,
                                    resize_mode=dc.resize, class_filter=dc.class_filter,
                                    shuffle_buffer=4096, seed=7, batch_size=args.n)))[0].numpy()
    out = {"run": args.run, "n": len(reals), "snapshots": rows,
           "reals_vs_reals": ref.distance(reals2)}
    if len(rows) >= 2:
        out["ratio_last_first"] = rows[-1]["distance"] / rows[0]["distance"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
