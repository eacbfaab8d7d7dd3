"""Tiny stand-in G/D models with closed-form behaviour, for the loss and trainer tests.

They follow the Generator/Discriminator contract (CONTRACTS.md): ``G.mapping(z, c, update_emas=)``
-> ws [N, num_ws, w_dim], ``G.synthesis(ws, noise_mode=)`` -> NHWC, ``G(z, c, noise_mode=)``,
attributes z_dim, c_dim, w_dim, num_ws, img_resolution, img_channels, ``G.mapping.w_avg``;
``D(img, c)`` -> logits [N, 1].
"""
import keras
import numpy as np
import tensorflow as tf


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
            u = u + self.noise_strength * tf.random.normal(tf.shape(u))
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
