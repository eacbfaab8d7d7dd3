"""bias_act against NumPy closed forms, plus an R1 (second-order gradient) check of a tiny D."""
import math

import numpy as np
import pytest
import tensorflow as tf

from histaug_tf.ops.bias_act import bias_act
from histaug_tf.ops.upfirdn2d import downsample2d, setup_filter


def _np_act(x, act, alpha):
    if act == "linear":
        return x
    if act == "relu":
        return np.maximum(x, 0)
    if act == "lrelu":
        return np.where(x >= 0, x, alpha * x)
    if act == "tanh":
        return np.tanh(x)
    if act == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if act == "elu":
        return np.where(x > 0, x, np.exp(x) - 1)
    if act == "selu":
        a, s = 1.6732632423543772, 1.0507009873554805
        return s * np.where(x > 0, x, a * (np.exp(x) - 1))
    if act == "softplus":
        return np.log1p(np.exp(x))
    if act == "swish":
        return x / (1 + np.exp(-x))
    raise KeyError(act)


DEFAULT_GAIN = {"linear": 1, "relu": math.sqrt(2), "lrelu": math.sqrt(2), "tanh": 1, "sigmoid": 1,
                "elu": 1, "selu": 1, "softplus": 1, "swish": math.sqrt(2)}


@pytest.mark.parametrize("act", sorted(DEFAULT_GAIN))
def test_bias_act_matches_numpy(act):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 5, 6)) * 2
    b = rng.normal(size=6)
    want = _np_act(x + b, act, 0.2) * DEFAULT_GAIN[act]
    np.testing.assert_allclose(bias_act(x.astype(np.float32), b.astype(np.float32), act=act).numpy(), want,
                               rtol=1e-5, atol=1e-5)
    # explicit alpha / gain / clamp, and the bias on another axis
    want = np.clip(_np_act(x + b, act, 0.3) * 0.7, -0.5, 0.5)
    got = bias_act(x, b, act=act, alpha=0.3, gain=0.7, clamp=0.5).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    b3 = rng.normal(size=3)
    want = _np_act(x + b3.reshape(3, 1, 1, 1), act, 0.2) * DEFAULT_GAIN[act]
    np.testing.assert_allclose(bias_act(x, b3, act=act, dim=0).numpy(), want, rtol=1e-6, atol=1e-7)


def test_bias_act_float16_xla_and_no_bias():
    x = tf.random.normal([4, 8], dtype=tf.float32) * 300
    b = tf.random.normal([8])
    fn = tf.function(lambda x_, b_: bias_act(x_, b_, act="lrelu", clamp=256), jit_compile=True)
    y16 = fn(tf.cast(x, tf.float16), b)
    assert y16.dtype == tf.float16
    assert float(tf.reduce_max(tf.abs(tf.cast(y16, tf.float32)))) <= 256
    want = np.clip(_np_act(x.numpy() + b.numpy(), "lrelu", 0.2) * math.sqrt(2), -256, 256)
    np.testing.assert_allclose(y16.numpy().astype(np.float32), want, rtol=2e-3, atol=0.5)
    np.testing.assert_allclose(bias_act(x).numpy(), x.numpy())
    with pytest.raises(ValueError):
        bias_act(x, act="gelu_typo")


def _tiny_d(x, w, b, act):
    """A small D: FIR downsample -> 3x3 conv -> bias_act -> sum (a scalar logit per image)."""
    f = setup_filter([1, 3, 3, 1])
    h = downsample2d(x, f)
    h = tf.nn.conv2d(h, w, strides=1, padding="SAME")
    h = bias_act(h, b, act=act)
    return tf.reduce_sum(h, axis=[1, 2, 3])


def _r1(x, w, b, act):
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits_sum = tf.reduce_sum(_tiny_d(x, w, b, act))
    g = tape.gradient(logits_sum, x)
    return tf.reduce_sum(tf.square(g))


@pytest.mark.parametrize("act", ["lrelu", "softplus"])
def test_r1_second_order_gradient_matches_finite_differences(act):
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(1, 8, 8, 2)), tf.float64)
    w = tf.constant(rng.normal(size=(3, 3, 2, 3)) * 0.5, tf.float64)
    b = tf.constant(rng.normal(size=(3,)), tf.float64)
    # d R1 / d w (what the trainer needs) and d R1 / d x (second order through upfirdn2d itself).
    theo, num = tf.test.compute_gradient(lambda w_, x_: _r1(x_, w_, b, act), [w, x], delta=1e-5)
    assert np.all(np.isfinite(theo[0])) and np.abs(theo[0]).max() > 0
    np.testing.assert_allclose(theo[0], num[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(theo[1], num[1], rtol=1e-4, atol=1e-6)
    if act == "softplus":  # curved activation: d R1 / d x is non-zero
        assert np.abs(theo[1]).max() > 1e-2
    # The same second-order gradient under XLA (float32).
    def grad_r1(w_):
        with tf.GradientTape() as t:
            t.watch(w_)
            r = _r1(tf.cast(x, tf.float32), w_, tf.cast(b, tf.float32), act)
        return t.gradient(r, w_)
    got = tf.function(grad_r1, jit_compile=True)(tf.cast(w, tf.float32)).numpy()
    np.testing.assert_allclose(got, theo[0].reshape(got.shape), rtol=2e-3, atol=1e-4)
