"""Polyphase strided / transposed convolutions (histaug_tf.ops.polyphase) against NumPy loops
written from the definitions, and their first- and second-order gradients against TensorFlow's
own convolution ops (eagerly and under XLA)."""
import numpy as np
import pytest
import tensorflow as tf

from histaug_tf.ops import polyphase as pp

RNG = np.random.default_rng(77)


def np_strided(x, w, s, pad):
    """y[n, i, j, o] = sum_{u, v, c} xp[n, s i + u, s j + v, c] w[u, v, c, o]."""
    (py0, py1), (px0, px1) = pad
    xp = np.pad(x, [(0, 0), (py0, py1), (px0, px1), (0, 0)])
    kh, kw = w.shape[:2]
    ho, wo = (xp.shape[1] - kh) // s + 1, (xp.shape[2] - kw) // s + 1
    y = np.zeros([x.shape[0], ho, wo, w.shape[3]])
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, s * i:s * i + kh, s * j:s * j + kw, :]
            y[:, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [0, 1, 2]))
    return y


def np_transpose(x, f, s, crop):
    """Every input pixel scatters its taps: y[n, s i + u, s j + v, o] += x[n, i, j, c] f[u, v, o, c]."""
    n, h, wd, _ = x.shape
    kh, kw, o, _ = f.shape
    y = np.zeros([n, (h - 1) * s + kh, (wd - 1) * s + kw, o])
    for i in range(h):
        for j in range(wd):
            y[:, s * i:s * i + kh, s * j:s * j + kw] += np.einsum("nc,uvoc->nuvo", x[:, i, j], f)
    cy, cx = crop
    return y[:, cy:y.shape[1] - cy, cx:y.shape[2] - cx]


STRIDED = [  # h, w, k, stride, padding
    (8, 8, 3, 2, ((1, 1), (1, 1))),
    (9, 7, 3, 2, ((0, 1), (2, 0))),
    (7, 7, 1, 2, ((0, 0), (0, 0))),
    (10, 11, 4, 3, ((1, 2), (0, 1))),
    (6, 6, 3, 1, ((1, 1), (1, 1))),
]
TRANSPOSED = [  # h, w, k, stride, crop
    (8, 8, 3, 2, (0, 0)), (5, 6, 3, 2, (1, 1)), (4, 4, 1, 2, (0, 0)), (6, 5, 4, 2, (1, 0)),
    (5, 5, 5, 3, (1, 2)), (4, 3, 2, 3, (0, 0)),
]


FORWARD = (  # (op, NumPy loop, its last argument, kernel layout) per case
    [pytest.param(pp.strided_conv2d, np_strided, pad, (k, k, 3, 5), h, w, s, id=f"strided-{i}")
     for i, (h, w, k, s, pad) in enumerate(STRIDED)]
    + [pytest.param(pp.conv2d_transpose, np_transpose, crop, (k, k, 5, 3), h, w, s,
                    id=f"transpose-{i}") for i, (h, w, k, s, crop) in enumerate(TRANSPOSED)])


@pytest.mark.parametrize("op,ref_fn,last,kshape,h,w,s", FORWARD)
def test_forward_matches_numpy(op, ref_fn, last, kshape, h, w, s):
    x = RNG.standard_normal([2, h, w, 3])
    k = RNG.standard_normal(kshape)
    got = op(tf.constant(x, tf.float32), tf.constant(k, tf.float32), s, last)
    ref = ref_fn(x, k, s, last)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-4 * max(1, np.abs(ref).max()), rtol=0)


def _value_grads(fn, x, w):
    """fn's value, its gradients and the gradients of a penalty on those gradients (2nd order)."""
    with tf.GradientTape(persistent=True) as outer:
        outer.watch([x, w])
        with tf.GradientTape() as inner:
            inner.watch([x, w])
            y = fn(x, w)
            loss = tf.reduce_sum(y * tf.sin(y))
        gx, gw = inner.gradient(loss, [x, w])
        pen = tf.reduce_sum(tf.square(gx)) + 0.5 * tf.reduce_sum(tf.square(gw))
    return [y, gx, gw] + outer.gradient(pen, [x, w])


def _check_grads(native, poly, x, w, jit):
    run = (lambda f: tf.function(lambda a, b: _value_grads(f, a, b), jit_compile=True)) if jit \
        else (lambda f: lambda a, b: _value_grads(f, a, b))
    ref = run(native)(x, w)
    got = run(poly)(x, w)
    for name, r, g in zip(["value", "dx", "dw", "d2x", "d2w"], ref, got):
        r, g = r.numpy(), g.numpy()
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-5 * max(1.0, np.abs(r).max()),
                                   err_msg=name)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("h,w,k,s,pad", [STRIDED[0], STRIDED[1], STRIDED[3]])
def test_strided_gradients_match_tensorflow(h, w, k, s, pad, jit):
    x = tf.constant(RNG.standard_normal([2, h, w, 3]), tf.float32)
    wt = tf.constant(RNG.standard_normal([k, k, 3, 4]), tf.float32)
    tf_pad = [[0, 0], list(pad[0]), list(pad[1]), [0, 0]]
    _check_grads(lambda a, b: tf.nn.conv2d(a, b, s, tf_pad),
                 lambda a, b: pp.strided_conv2d(a, b, s, pad), x, wt, jit)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("h,w,k,s,crop", [TRANSPOSED[0], TRANSPOSED[1], TRANSPOSED[4]])
def test_transpose_gradients_match_tensorflow(h, w, k, s, crop, jit):
    x = tf.constant(RNG.standard_normal([2, h, w, 3]), tf.float32)
    f = tf.constant(RNG.standard_normal([k, k, 4, 3]), tf.float32)
    shape = [2, (h - 1) * s + k - 2 * crop[0], (w - 1) * s + k - 2 * crop[1], 4]
    tf_pad = "VALID" if max(crop) == 0 else [[0, 0], [crop[0]] * 2, [crop[1]] * 2, [0, 0]]
    _check_grads(lambda a, b: tf.nn.conv2d_transpose(a, b, shape, s, tf_pad),
                 lambda a, b: pp.conv2d_transpose(a, b, s, crop), x, f, jit)


def test_impl_selection():
    assert pp.current_impl() == "native"
    with pp.default_impl("polyphase"):
        assert pp.current_impl() == "polyphase"
    assert pp.current_impl() == "native"
    with pytest.raises(ValueError):
        with pp.default_impl("winograd"):
            pass
