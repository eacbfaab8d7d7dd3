"""Fused bias + activation + gain + clamp (NVlabs ``torch_utils/ops/bias_act.py`` semantics), NHWC.

The bias is added along the LAST axis by default (channels of NHWC, features of a dense layer).
Pure TF element-wise ops: XLA fuses them into one kernel; first and second order gradients exist.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import tensorflow as tf

__all__ = ["activation_funcs", "bias_act"]


class _Spec(NamedTuple):
    func: object
    def_alpha: float
    def_gain: float


def _lrelu(x, alpha):
    return tf.where(x >= 0, x, x * tf.cast(alpha, x.dtype))


# The activation table of the reference (name -> function, default alpha, default gain).
activation_funcs = {
    "linear": _Spec(lambda x, alpha: x, 0.0, 1.0),
    "relu": _Spec(lambda x, alpha: tf.nn.relu(x), 0.0, math.sqrt(2)),
    "lrelu": _Spec(_lrelu, 0.2, math.sqrt(2)),
    "tanh": _Spec(lambda x, alpha: tf.tanh(x), 0.0, 1.0),
    "sigmoid": _Spec(lambda x, alpha: tf.sigmoid(x), 0.0, 1.0),
    "elu": _Spec(lambda x, alpha: tf.nn.elu(x), 0.0, 1.0),
    "selu": _Spec(lambda x, alpha: tf.nn.selu(x), 0.0, 1.0),
    "softplus": _Spec(lambda x, alpha: tf.nn.softplus(x), 0.0, 1.0),
    "swish": _Spec(lambda x, alpha: tf.sigmoid(x) * x, 0.0, math.sqrt(2)),
}


def bias_act(x, b=None, act="linear", alpha=None, gain=None, clamp=None, dim=-1):
    """Add bias ``b`` along axis ``dim``, apply ``act``, multiply by ``gain``, clamp to ±``clamp``.

    Args:
        x: float tensor of any shape (float16 works: the arithmetic stays in ``x.dtype``).
        b: 1-D bias of length ``x.shape[dim]`` or None. Cast to ``x.dtype``.
        act: one of ``activation_funcs`` ('linear', 'relu', 'lrelu', 'tanh', 'sigmoid', 'elu',
            'selu', 'softplus', 'swish').
        alpha: shape parameter (only lrelu uses it; default 0.2), None for the default.
        gain: output scale, None for the activation's default (sqrt 2 for relu, lrelu, swish;
            1 otherwise).
        clamp: clamp the output to ``[-clamp, clamp]`` (after the gain), None to disable.
        dim: the axis of ``x`` the bias runs along (default: last).

    Returns:
        tensor of the shape and dtype of ``x``.
    """
    x = tf.convert_to_tensor(x)
    if act not in activation_funcs:
        raise ValueError(f"bias_act: unknown activation {act!r}; one of {sorted(activation_funcs)}")
    assert clamp is None or clamp >= 0
    spec = activation_funcs[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    if b is not None:
        b = tf.cast(b, x.dtype)
        assert b.shape.rank == 1, b.shape
        rank = x.shape.rank
        d = dim % rank
        if d != rank - 1:
            b = tf.reshape(b, [-1 if i == d else 1 for i in range(rank)])
        x = x + b
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * tf.cast(gain, x.dtype)
    if clamp is not None:
        c = tf.cast(clamp, x.dtype)
        x = tf.clip_by_value(x, -c, c)
    return x
