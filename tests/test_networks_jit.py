"""G and D give the same outputs eagerly and under XLA (jit_compile=True), 16..256 px."""
import numpy as np
import pytest
import tensorflow as tf

from histaug_tf.gan.networks import Generator, Discriminator
from histaug_tf.ops.upfirdn2d import xla_function

RNG = np.random.default_rng(11)


def inputs(n, z_dim, c_dim):
    z = tf.constant(RNG.standard_normal([n, z_dim]), tf.float32)
    c = tf.one_hot(np.arange(n) % max(c_dim, 1), c_dim) if c_dim else None
    return z, c


# ------------------------------------------------------------------ jit on/off, all resolutions
@pytest.mark.parametrize("res,c_dim", [(16, 2), (32, 0), (64, 3),
                                       pytest.param(128, 0, marks=pytest.mark.slow),
                                       pytest.param(256, 2, marks=pytest.mark.slow)])
def test_jit_on_and_off_agree(res, c_dim):
    G = Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=res, img_channels=3,
                  mapping_kwargs=dict(num_layers=1),
                  synthesis_kwargs=dict(channel_base=4 * res, channel_max=4))
    D = Discriminator(c_dim=c_dim, img_resolution=res, img_channels=3, channel_base=4 * res,
                      channel_max=4, mapping_kwargs=dict(num_layers=1),
                      epilogue_kwargs=dict(mbstd_group_size=2))
    z, c = inputs(2, 8, c_dim)
    img = G(z, c, truncation_psi=0.7, noise_mode="const")
    logits = D(img, c)
    gj = xla_function(lambda z, c: G(z, c, truncation_psi=0.7, noise_mode="const"))
    dj = xla_function(lambda x, c: D(x, c))
    assert img.shape == (2, res, res, 3) and logits.shape == (2, 1)
    np.testing.assert_allclose(gj(z, c).numpy(), img.numpy(), atol=1e-4)
    np.testing.assert_allclose(dj(img, c).numpy(), logits.numpy(), atol=1e-4)


@pytest.mark.slow
def test_second_order_gradients_r1_and_path_length():
    """R1 (grad of |dD/dx|^2 w.r.t. D's weights) and path-length style (grad of |d(G.synthesis
    . y)/dws|^2 w.r.t. G's weights) exist, are finite, and agree eagerly and under XLA."""
    G = Generator(z_dim=8, c_dim=2, w_dim=8, img_resolution=16, img_channels=3,
                  mapping_kwargs=dict(num_layers=1),
                  synthesis_kwargs=dict(channel_base=64, channel_max=4))
    D = Discriminator(c_dim=2, img_resolution=16, img_channels=3, channel_base=64,
                      channel_max=4, mapping_kwargs=dict(num_layers=1),
                      epilogue_kwargs=dict(mbstd_group_size=2))
    for v in G.trainable_variables + D.trainable_variables:  # make every path non-trivial
        v.assign(v + tf.random.normal(v.shape, stddev=0.1, seed=1))
    z, c = inputs(2, 8, 2)
    x = tf.constant(RNG.uniform(-1, 1, [2, 16, 16, 3]), tf.float32)
    y = tf.constant(RNG.standard_normal([2, 16, 16, 3]), tf.float32)

    def r1(x, c):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                inner.watch(x)
                out = tf.reduce_sum(D(x, c))
            gx = inner.gradient(out, x)
            pen = tf.reduce_sum(tf.square(gx))
        return pen, outer.gradient(pen, D.trainable_variables)

    def pl(z, c, y):
        with tf.GradientTape() as outer:
            ws = G.mapping(z, c)
            with tf.GradientTape() as inner:
                inner.watch(ws)
                img = G.synthesis(ws, noise_mode="const")
                out = tf.reduce_sum(img * y)
            gw = inner.gradient(out, ws)
            pen = tf.reduce_sum(tf.square(gw))
        return pen, outer.gradient(pen, G.trainable_variables)

    for fn, args, model in ((r1, (x, c), D), (pl, (z, c, y), G)):
        pen, grads = fn(*args)
        pen_j, grads_j = xla_function(fn)(*args)
        # every weight reaches the penalty (some biases only shift the output: no gradient)
        for v, g in zip(model.trainable_variables, grads):
            assert g is not None or not v.path.endswith("weight"), v.path
        assert np.isfinite(pen.numpy()) and pen.numpy() > 0
        np.testing.assert_allclose(pen_j.numpy(), pen.numpy(), rtol=1e-4)
        for g, gj in zip(grads, grads_j):
            if g is None:
                assert gj is None
                continue
            assert np.all(np.isfinite(g.numpy()))
            np.testing.assert_allclose(gj.numpy(), g.numpy(), rtol=1e-3,
                                       atol=1e-4 * max(1.0, np.abs(g.numpy()).max()))
