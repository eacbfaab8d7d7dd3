"""Strided and transposed 2-D convolutions as sums of stride-1 convolutions (polyphase), NHWC.

A stride-``s`` convolution reads every ``s``-th input pixel, and a stride-``s`` transposed
convolution writes every ``s``-th output pixel. Split into the ``s * s`` phases of the input
(strided) or of the output (transposed), each phase is an ordinary stride-1 convolution of one
phase of the image with the kernel taps that fall on it — ``w[a::s, b::s]``. Every multiply-add of
the original operation is done exactly once, and no multiply falls on an inserted zero.

Why: XLA's CPU backend runs a transposed convolution (and the input gradient of a strided one)
as a convolution over a zero-stuffed input (``lhs_dilate``), i.e. about ``s * s`` times the
arithmetic, and so does it for the filter gradient of a transposed convolution. Measured at the
``demo`` sizes (batch 32, 128 channels, 16² → 32², 2 threads): a 3x3 transposed convolution ran
at 50 GFLOP/s against 163 GFLOP/s for the stride-1 convolution of equal arithmetic, and the input
gradient of the stride-2 convolution at about a third of it (``benchmarks/bench_conv.py``).
Custom gradients pair the two: the input gradient of the strided convolution is the polyphase
transposed one and vice versa; filter gradients are TensorFlow's ``Conv2DBackpropFilter``. So no
gradient, of any order, falls back to a zero-stuffed convolution on the input side.

Semantics are exactly those of ``tf.nn.conv2d`` with ``strides=s`` (correlation, explicit padding)
and ``tf.nn.conv2d_transpose`` with ``strides=s`` and ``padding='VALID'`` (plus an optional
symmetric crop); results differ from TensorFlow's kernels only by float rounding (the sums are
added in another order). Spatial sizes must be static.

:func:`default_impl` picks the implementation used by ``histaug_tf.gan.layers`` when a call does
not say: ``'native'`` (TensorFlow's ops: the default, right for TensorFlow's own CPU/GPU kernels
and for XLA on GPU, which calls cuDNN) or ``'polyphase'`` (this module; what
``upfirdn2d.xla_function`` selects for programs compiled by XLA on a machine without a GPU).
"""
from __future__ import annotations

import tensorflow as tf

from histaug_tf.ops._choice import ImplChoice

__all__ = ["strided_conv2d", "conv2d_transpose", "default_impl", "current_impl", "IMPLS"]

IMPLS = ("native", "polyphase")
_CHOICE = ImplChoice(IMPLS, fallback="native")
#: ``with default_impl(impl):`` -- inside, :func:`current_impl` is ``impl``.
default_impl = _CHOICE.scope
current_impl = _CHOICE.current


def _static_hw(x):
    h, w = x.shape[1], x.shape[2]
    if h is None or w is None:
        raise ValueError(f"polyphase convolutions need static spatial sizes, got {x.shape}")
    return int(h), int(w)


def _ceil_div(a, b):
    return -(-a // b)


def strided_conv2d(x, w, stride, padding=((0, 0), (0, 0))):
    """``tf.nn.conv2d(x, w, strides=stride, padding=[[0,0], pad_y, pad_x, [0,0]])`` (correlation).

    The forward pass is TensorFlow's strided convolution (XLA runs it at full speed); its input
    gradient is the polyphase :func:`conv2d_transpose`, its filter gradient TensorFlow's
    ``Conv2DBackpropFilter``.

    Args:
        x: ``[N, H, W, I]``.
        w: ``[kh, kw, I, O]``.
        stride: int ``s >= 1`` (both axes).
        padding: ``((y0, y1), (x0, x1))`` zero padding, non-negative.
    """
    s = int(stride)
    kh, kw = int(w.shape[0]), int(w.shape[1])
    (py0, py1), (px0, px1) = padding
    if min(py0, py1, px0, px1) < 0:
        raise ValueError(f"padding must be non-negative, got {padding}")
    if max(py0, py1, px0, px1) > 0:
        x = tf.pad(x, [[0, 0], [py0, py1], [px0, px1], [0, 0]])
    h, wd = _static_hw(x)
    if h < kh or wd < kw:
        raise ValueError(f"kernel {kh}x{kw} larger than the padded input {h}x{wd}")
    if s == 1:
        return tf.nn.conv2d(x, w, strides=1, padding="VALID")
    return _strided_valid(x, w, s)


def _strided_valid(x, w, s):
    kh, kw = int(w.shape[0]), int(w.shape[1])
    h, wd = _static_hw(x)
    ho, wo = (h - kh) // s + 1, (wd - kw) // s + 1
    # Rows/columns past the last window get no gradient.
    rest_y, rest_x = h - ((ho - 1) * s + kh), wd - ((wo - 1) * s + kw)

    @tf.custom_gradient
    def op(x, w):
        y = tf.nn.conv2d(x, w, strides=s, padding="VALID")

        def grad(dy):
            # adjoint in x: dx[s i + u] += dy[i] w[u] -- a transposed convolution of dy
            dx = _transpose_valid(dy, w, s)
            if rest_y or rest_x:
                dx = tf.pad(dx, [[0, 0], [0, rest_y], [0, rest_x], [0, 0]])
            dw = tf.compat.v1.nn.conv2d_backprop_filter(
                x, tf.shape(w), dy, strides=[1, s, s, 1], padding="VALID")
            return dx, dw

        return y, grad

    return op(x, w)


def _transpose_valid(x, filters, s):
    """``tf.nn.conv2d_transpose(x, filters, strides=s, padding='VALID')``: polyphase forward;
    its input gradient is the strided convolution, its filter gradient ``Conv2DBackpropFilter``
    with the roles of input and output exchanged."""

    @tf.custom_gradient
    def op(x, filters):
        y = _polyphase_transpose(x, filters, s)

        def grad(dy):
            # adjoint in x: dx[i] = sum_u dy[s i + u] f[u] -- a strided correlation of dy
            dx = _strided_valid(dy, filters, s)
            df = tf.compat.v1.nn.conv2d_backprop_filter(
                dy, tf.shape(filters), x, strides=[1, s, s, 1], padding="VALID")
            return dx, df

        return y, grad

    return op(x, filters)


def conv2d_transpose(x, filters, stride, crop=(0, 0)):
    """``tf.nn.conv2d_transpose(x, filters, strides=stride, padding='VALID')`` with ``crop[0]``
    rows and ``crop[1]`` columns removed from both ends (``padding=[[0,0],[cy,cy],[cx,cx],[0,0]]``
    in TensorFlow's explicit-padding form).

    The forward pass is the polyphase sum of stride-1 convolutions; the input gradient is
    TensorFlow's strided convolution (:func:`strided_conv2d`'s forward), the filter gradient
    ``Conv2DBackpropFilter``.

    Args:
        x: ``[N, H, W, I]``.
        filters: ``[kh, kw, O, I]`` (TensorFlow's transposed-convolution layout).
        stride: int ``s >= 1``.
    Returns:
        ``[N, (H - 1) s + kh - 2 cy, (W - 1) s + kw - 2 cx, O]``.
    """
    s = int(stride)
    kh, kw = int(filters.shape[0]), int(filters.shape[1])
    cy, cx = (int(c) for c in crop)
    h, wd = _static_hw(x)
    oh, ow = (h - 1) * s + kh, (wd - 1) * s + kw
    if min(cy, cx) < 0 or 2 * cy >= oh or 2 * cx >= ow:
        raise ValueError(f"crop {crop} does not fit the {oh}x{ow} output")
    y = _transpose_valid(x, filters, s)
    if cy or cx:
        y = y[:, cy:oh - cy, cx:ow - cx, :]
    return y


def _polyphase_transpose(x, filters, s):
    kh, kw = int(filters.shape[0]), int(filters.shape[1])
    out_ch = int(filters.shape[2])
    h, wd = _static_hw(x)
    oh, ow = (h - 1) * s + kh, (wd - 1) * s + kw
    w = tf.transpose(filters, [0, 1, 3, 2])  # [kh, kw, I, O]
    # Output phase (a, b): y[s r + a, s c + b] = sum_{p, q} x[r - p, c - q] * w[s p + a, s q + b],
    # a full convolution of x with the phase's taps = correlation of the padded x with them flipped.
    taps_y = [_ceil_div(kh - a, s) if a < kh else 0 for a in range(s)]
    taps_x = [_ceil_div(kw - b, s) if b < kw else 0 for b in range(s)]
    rows, cols = h + taps_y[0] - 1, wd + taps_x[0] - 1  # the largest phase (a = 0, b = 0)
    n = tf.shape(x)[0]
    phase_rows = []
    for a in range(s):
        phase_cols = []
        for b in range(s):
            ty, tx = taps_y[a], taps_x[b]
            if ty == 0 or tx == 0:
                phase_cols.append(tf.zeros(tf.stack([n, rows, cols, out_ch]), x.dtype))
                continue
            wa = tf.reverse(w[a::s, b::s], axis=[0, 1])
            xp = tf.pad(x, [[0, 0], [ty - 1, ty - 1], [tx - 1, tx - 1], [0, 0]])
            part = tf.nn.conv2d(xp, wa, strides=1, padding="VALID")  # [N, h+ty-1, w+tx-1, O]
            part = tf.pad(part, [[0, 0], [0, rows - (h + ty - 1)], [0, cols - (wd + tx - 1)],
                                 [0, 0]])
            phase_cols.append(part)
        phase_rows.append(tf.stack(phase_cols, axis=3))  # [N, rows, cols, s, O]
    y = tf.stack(phase_rows, axis=2)  # [N, rows, s, cols, s, O]
    y = tf.reshape(y, [-1, rows * s, cols * s, out_ch])
    return y[:, :oh, :ow, :]
