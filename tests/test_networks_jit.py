"""G and D give the same outputs eagerly and under XLA (jit_compile=True), 16..256 px."""
import numpy as np
import pytest
import tensorflow as tf

from histaug_tf.gan.networks import Generator, Discriminator

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
    gj = tf.function(lambda z, c: G(z, c, truncation_psi=0.7, noise_mode="const"),
                     jit_compile=True)
    dj = tf.function(lambda x, c: D(x, c), jit_compile=True)
    assert img.shape == (2, res, res, 3) and logits.shape == (2, 1)
    np.testing.assert_allclose(gj(z, c).numpy(), img.numpy(), atol=1e-4)
    np.testing.assert_allclose(dj(img, c).numpy(), logits.numpy(), atol=1e-4)
