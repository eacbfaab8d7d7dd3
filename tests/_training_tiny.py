"""Tiny stand-in G/D models with closed-form behaviour, for the loss and trainer tests.

They follow the Generator/Discriminator contract (CONTRACTS.md): ``G.mapping(z, c, update_emas=)``
-> ws [N, num_ws, w_dim], ``G.synthesis(ws, noise_mode=)`` -> NHWC, ``G(z, c, noise_mode=)``,
attributes z_dim, c_dim, w_dim, num_ws, img_resolution, img_channels, ``G.mapping.w_avg``;
``D(img, c)`` -> logits [N, 1].
"""
import keras
import numpy as np
import tensorflow as tf

from histaug_tf.gan.layers import random_noise


class TinyMapping(keras.layers.Layer):
    def __init__(self, z_dim, c_dim, w_dim, num_ws, **kw):
        super().__init__(**kw)
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.w_avg_beta = 0.995
        self.fc = self.add_weight(shape=(z_dim + c_dim, w_dim), initializer="glorot_uniform",
                                  name="fc")
        self.w_avg = self.add_weight(shape=(w_dim,), initializer="zeros", trainable=False,
                                     name="w_avg")

    def call(self, z, c=None, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        x = z if not self.c_dim else tf.concat([z, c], axis=1)
        w = tf.nn.leaky_relu(tf.matmul(x, self.fc), 0.2)
        return tf.tile(w[:, None, :], [1, self.num_ws, 1])


class TinySynthesis(keras.layers.Layer):
    """img = tanh(reshape(ws) @ A (+ noise_strength * noise)) reshaped to NHWC."""

    def __init__(self, w_dim, num_ws, res, ch, **kw):
        super().__init__(**kw)
        self.res, self.ch, self.num_ws, self.w_dim = res, ch, num_ws, w_dim
        self.A = self.add_weight(shape=(num_ws * w_dim, res * res * ch),
                                 initializer=keras.initializers.RandomNormal(stddev=0.3), name="A")
        self.noise_strength = self.add_weight(shape=(), initializer="zeros", name="noise_strength")

    def call(self, ws, noise_mode="random"):
        u = tf.matmul(tf.reshape(ws, [-1, self.num_ws * self.w_dim]), self.A)
        if noise_mode == "random":
            u = u + self.noise_strength * random_noise(tf.shape(u))
        return tf.reshape(tf.tanh(u), [-1, self.res, self.res, self.ch])


class TinyG(keras.Model):
    def __init__(self, z_dim=4, c_dim=0, w_dim=4, res=4, ch=3, num_ws=3, **kw):
        super().__init__(**kw)
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.num_ws, self.img_resolution, self.img_channels = num_ws, res, ch
        self.mapping = TinyMapping(z_dim, c_dim, w_dim, num_ws)
        self.synthesis = TinySynthesis(w_dim, num_ws, res, ch)

    def call(self, z, c=None, truncation_psi=1, truncation_cutoff=None, noise_mode="random"):
        return self.synthesis(self.mapping(z, c), noise_mode=noise_mode)


class TinyD(keras.Model):
    """logit = sum(v * tanh(x)) / (H W C) + dense(c) + b."""

    def __init__(self, c_dim=0, res=4, ch=3, **kw):
        super().__init__(**kw)
        self.c_dim = c_dim
        self.v = self.add_weight(shape=(res, res, ch),
                                 initializer=keras.initializers.RandomNormal(stddev=1.0), name="v")
        self.b = self.add_weight(shape=(), initializer="zeros", name="b")
        self.cw = self.add_weight(shape=(max(c_dim, 1),), initializer="zeros", name="cw")
        self.scale = 1.0 / (res * res * ch)

    def call(self, img, c=None):
        out = tf.reduce_sum(self.v * tf.tanh(img), axis=[1, 2, 3]) * self.scale + self.b
        if self.c_dim:
            out = out + tf.reduce_sum(c * self.cw, axis=1)
        return out[:, None]


def build_tiny(seed=0, z_dim=4, c_dim=0, w_dim=4, res=4, ch=3, num_ws=3):
    keras.utils.set_random_seed(seed)
    G = TinyG(z_dim, c_dim, w_dim, res, ch, num_ws)
    D = TinyD(c_dim, res, ch)
    G_ema = TinyG(z_dim, c_dim, w_dim, res, ch, num_ws)
    z = tf.zeros([1, z_dim])
    c = tf.zeros([1, c_dim])
    G(z, c)
    G_ema(z, c)
    D(tf.zeros([1, res, res, ch]), c)
    for a, b in zip(G.variables, G_ema.variables):
        b.assign(a)
    return G, D, G_ema


def tiny_images(n, res=4, ch=3, seed=0):
    rnd = np.random.RandomState(seed)
    return np.tanh(rnd.randn(n, res, res, ch) * 0.5 + 0.3).astype(np.float32)


class StubPipe:
    """Stand-in augment pipe: p variable; x -> x + p * N(0, 0.1) (stateful random)."""

    def __init__(self):
        self.p = tf.Variable(0.0, trainable=False, name="p")

    def __call__(self, x):
        return x + self.p * 0.1 * tf.random.normal(tf.shape(x))


def tiny_input_fn(n=64, res=4, ch=3, c_dim=0):
    imgs = tiny_images(n, res, ch, seed=11)
    labels = (np.arange(n) % max(c_dim, 1)).astype(np.int32)

    def input_fn(num_workers, worker_index, worker_batch, seed):
        ds = tf.data.Dataset.from_tensor_slices((imgs, labels))
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
        if num_workers == 1:
            return ds.batch(worker_batch, drop_remainder=True)
        # every worker reads the global batch and takes its slice (exact equivalence)
        gb = worker_batch * num_workers
        ds = ds.batch(gb, drop_remainder=True)
        return ds.map(lambda x, y: (x[worker_index * worker_batch:(worker_index + 1) * worker_batch],
                                    y[worker_index * worker_batch:(worker_index + 1) * worker_batch]))
    return input_fn


def _pipe_factory(pipe, seed, worker_index):
    """pipe: False (none), True (StubPipe), or an augment preset name such as "bgc" (the real
    AugmentPipe, seeded per worker as apps/train_gan.py does)."""
    if not pipe:
        return None
    if pipe is True:
        return StubPipe
    from histaug_tf.gan import augment
    return lambda: augment.make_augment_pipe(pipe, seed=seed + 1 + 1000 * worker_index)


def make_tiny_trainer(run_dir, strategy=None, batch=8, kimg=0.2, tick=0.04, pipe=False,
                      noise_mode="const", style_mixing=0.0, deterministic=False,
                      num_workers=1, worker_index=0, is_chief=True, seed=0, log=None, **fields):
    """A Trainer of the tiny stand-in networks; ``fields``: TrainingConfig fields by name
    (``gamma``, ``p``, ``target``, ``G_reg_interval``, ...)."""
    from histaug_tf.gan.config import TrainingConfig
    from histaug_tf.gan.trainer import Trainer
    strategy = strategy or tf.distribute.get_strategy()
    fields.setdefault("G_reg_interval", 4)
    fields.setdefault("D_reg_interval", 2)
    fields.setdefault("gamma", 1.0)
    fields.setdefault("G_lr", 0.01)
    fields.setdefault("D_lr", 0.01)
    fields.setdefault("ema_kimg", 0.05)
    fields.setdefault("cfg", "tiny-test")
    config = TrainingConfig.from_flat(
        outdir=run_dir, batch=batch, kimg=kimg, tick=tick, snap=2, noise_mode=noise_mode,
        style_mixing=style_mixing, deterministic=deterministic, seed=seed, **fields)
    return Trainer(config, strategy=strategy, build_networks=lambda: build_tiny(seed=0),
                   input_fn=tiny_input_fn(), make_augment_pipe=_pipe_factory(pipe, seed, worker_index),
                   num_workers=num_workers, worker_index=worker_index, is_chief=is_chief,
                   log=log or (lambda *a, **k: None))


def dump_weights(trainer, path):
    arrs = {}
    for name, model in (("G", trainer.G), ("D", trainer.D), ("G_ema", trainer.G_ema)):
        for i, v in enumerate(model.variables):
            arrs[f"{name}/{i}/{v.path}".replace("/", "|")] = np.asarray(v.numpy())
    for i, v in enumerate(trainer.G_opt.variables + trainer.D_opt.variables):
        arrs[f"opt|{i}"] = np.asarray(v.numpy())
    arrs["nimg"] = np.asarray(trainer.nimg_var.numpy())
    arrs["pl_mean"] = np.asarray(trainer.pl_mean.numpy())
    if trainer.augment_pipe is not None:
        arrs["p"] = np.asarray(trainer.augment_pipe.p.numpy())
    np.savez(path, **arrs)


def _main():
    """Subprocess entry: python _training_tiny.py MODE RUN_DIR OUT.npz [options as JSON]."""
    import json
    import os
    import sys
    mode, run_dir, out = sys.argv[1], sys.argv[2], sys.argv[3]
    opts = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    if opts.pop("deterministic_ops", False):
        tf.config.experimental.enable_op_determinism()
    nw, wi, chief = 1, 0, True
    if mode == "mirrored":
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    elif mode == "multiworker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        cfg = json.loads(os.environ["TF_CONFIG"])
        nw, wi = len(cfg["cluster"]["worker"]), int(cfg["task"]["index"])
        chief = wi == 0
    else:
        strategy = tf.distribute.get_strategy()
    t = make_tiny_trainer(run_dir, strategy=strategy, num_workers=nw, worker_index=wi,
                          is_chief=chief, **opts)
    t.run()
    dump_weights(t, out)


if __name__ == "__main__":
    _main()
