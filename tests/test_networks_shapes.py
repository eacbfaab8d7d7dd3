"""Shape asserts at block boundaries (the reference's misc.assert_shape): a wrong input shape is a
ValueError that names the block and both shapes, raised while tracing."""
import pytest
import tensorflow as tf

from histaug_tf.gan.networks import Discriminator, Generator, assert_shape

KW = dict(z_dim=8, c_dim=2, w_dim=8, img_resolution=16, img_channels=3,
          mapping_kwargs=dict(num_layers=2),
          synthesis_kwargs=dict(channel_base=64, channel_max=8))


def test_assert_shape_itself():
    assert_shape(tf.zeros([2, 4, 4, 3]), [None, 4, 4, 3], "x")
    assert_shape(None, [None, 4], "x")  # absent inputs (the first block's x) pass
    with pytest.raises(ValueError, match=r"^b8 input: expected shape \[N, 4, 4, 3\], got \[2, 4, 5, 3\]$"):
        assert_shape(tf.zeros([2, 4, 5, 3]), [None, 4, 4, 3], "b8 input")
    with pytest.raises(ValueError, match="expected shape"):
        assert_shape(tf.zeros([2, 4, 4]), [None, 4, 4, 3], "x")


def test_networks_reject_wrong_shapes_at_their_boundaries():
    G = Generator(**KW)
    D = Discriminator(c_dim=2, img_resolution=16, img_channels=3, channel_base=64, channel_max=8)
    z, c = tf.zeros([2, 8]), tf.one_hot([0, 1], 2)
    img = G(z, c)
    assert tuple(img.shape) == (2, 16, 16, 3)
    assert tuple(D(img, c).shape) == (2, 1)
    with pytest.raises(ValueError, match=r"z: expected shape \[N, 8\], got \[2, 7\]"):
        G(tf.zeros([2, 7]), c)
    with pytest.raises(ValueError, match=r"c: expected shape \[N, 2\], got \[2, 3\]"):
        G(z, tf.zeros([2, 3]))
    with pytest.raises(ValueError, match=r"img: expected shape \[N, 16, 16, 3\], got \[2, 16, 16, 1\]"):
        D(tf.zeros([2, 16, 16, 1]), c)
    # inside the synthesis network: a block handed the wrong ws slice
    b16 = G.synthesis.blocks[-1]
    x = tf.zeros([2, 8, 8, b16.in_channels])
    with pytest.raises(ValueError, match=r"b16 ws: expected shape \[N, 3, 8\], got \[2, 2, 8\]"):
        b16(x, None, tf.zeros([2, 2, 8]))
    with pytest.raises(ValueError, match=r"b16 input: expected shape"):
        b16(tf.zeros([2, 4, 4, b16.in_channels]), None, tf.zeros([2, 3, 8]))
    # D's blocks: a block fed the previous resolution
    d8 = [b for b in D.blocks if b.resolution == 8][0]
    with pytest.raises(ValueError, match=r"b8 input: expected shape \[N, 8, 8, "):
        d8(tf.zeros([2, 16, 16, d8.in_channels]), None)
