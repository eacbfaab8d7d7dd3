"""Subprocess for tests/test_graph_cache.py:
python _graph_cache_probe.py RUN_DIR OUT JIT [SEED COUNT0,COUNT1]

Trains 4 steps of the real networks (tiny preset at 16 px, random per-layer noise, the bgc pipe
at p = 0.5: every phase and the EMA update) with the graph cache of $HISTAUG_GRAPH_CACHE; with
SEED and class counts, a run of that seed whose networks are conditional on 2 classes drawn in
those proportions for the fakes. Writes
OUT.npz (every variable of G, D, G_ema and both optimizers) and OUT.json (per step function: how
it got its graph, and how often its tf.function was traced).
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from _training_tiny import tiny_input_fn  # noqa: E402


def make_trainer(run_dir, jit, gamma=0.5, global_seed=5, log=None, seed=0, class_counts=None,
                 kimg=1):
    import keras
    from histaug_tf.apps.train_gan import networks_builder
    from histaug_tf.gan import augment
    from histaug_tf.gan.config import TrainingConfig
    from histaug_tf.gan.presets import get_preset
    from histaug_tf.gan.trainer import Trainer

    keras.utils.set_random_seed(global_seed)  # also TF's: the seeds of the noise ops
    c_dim = 2 if class_counts else 0
    build = networks_builder(get_preset("tiny", 16, c_dim=c_dim, mixed_precision=False))
    config = TrainingConfig.from_flat(
        outdir=str(run_dir), preset={"kimg": kimg}, batch=4, G_reg_interval=2, D_reg_interval=2,
        kimg=kimg, gamma=gamma,
        ema_kimg=0.01, p=0.5, jit=jit, seed=seed, c_dim=c_dim,
        class_counts=list(class_counts or []), label_names=["a", "b"] if c_dim else [])
    return Trainer(config, strategy=tf.distribute.get_strategy(), build_networks=build,
                   input_fn=tiny_input_fn(res=16, c_dim=c_dim),
                   make_augment_pipe=lambda: augment.make_augment_pipe("bgc", p=0.5, seed=1),
                   log=log or (lambda *a, **k: None))


def main():
    run_dir, out, jit = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    kw = {}
    if len(sys.argv) > 4:
        kw = dict(seed=int(sys.argv[4]), class_counts=[int(c) for c in sys.argv[5].split(",")])
    t = make_trainer(run_dir, jit, **kw)
    for _ in range(4):
        t.train_step()
    fns = dict(t._phase_fns, EMA=t._ema_step)
    info = {}
    for name, fn in fns.items():
        prep = getattr(fn, "last_prepare", None)
        if prep is None and not hasattr(fn, "prepare"):
            info[name] = {"source": "plain", "traces": fn.experimental_get_tracing_count()}
        elif prep is not None:
            info[name] = {"source": prep["source"],
                          "traces": fn.experimental_get_tracing_count()}
    arrs = {}
    for name, obj in (("G", t.G), ("D", t.D), ("G_ema", t.G_ema), ("G_opt", t.G_opt),
                      ("D_opt", t.D_opt)):
        for i, v in enumerate(obj.variables):
            arrs[f"{name}|{i}|{v.path}"] = np.asarray(v.numpy())
    np.savez(out + ".npz", **arrs)
    with open(out + ".json", "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    main()
