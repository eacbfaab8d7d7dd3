"""benchmarks/hlo_flops.py: FLOPs counted from XLA's HLO against closed forms (dense matmul;
a 3x3 convolution's forward, input-gradient and filter-gradient at stride 1 and 2, SAME and
VALID padding: each is the same number of multiply-adds, the taps that fall on real inputs)."""
import os
import sys

import pytest
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
from hlo_flops import count_flops  # noqa: E402


def _taps(n, k, stride, padding):
    """Valid (output, tap) pairs of one spatial dim, by enumeration of TF's padding rule."""
    if padding == "SAME":
        out = -(-n // stride)
        lo = max((out - 1) * stride + k - n, 0) // 2
    else:
        out, lo = (n - k) // stride + 1, 0
    return sum(1 for o in range(out) for t in range(k) if 0 <= o * stride + t - lo < n)


def test_matmul_flops():
    f = tf.function(lambda a, b: tf.matmul(a, b), jit_compile=True)
    hlo = f.experimental_get_compiler_ir(tf.ones([5, 7]), tf.ones([7, 3]))(stage="hlo")
    assert count_flops(hlo) == {"dot": 2 * 5 * 7 * 3, "convolution": 0, "total": 210,
                                "instructions": 1}


@pytest.mark.parametrize("stride,padding", [(1, "SAME"), (2, "SAME"), (1, "VALID"), (2, "VALID")])
def test_conv_forward_and_both_gradients(stride, padding):
    n, h, ci, co, k = 2, 9, 3, 4, 3

    @tf.function(jit_compile=True)
    def f(x, w):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            y = tf.reduce_sum(tf.nn.conv2d(x, w, stride, padding) ** 2)
        return tape.gradient(y, [x, w])

    hlo = f.experimental_get_compiler_ir(tf.ones([n, h, h, ci]), tf.ones([k, k, ci, co]))(
        stage="hlo")
    got = count_flops(hlo)
    fwd = 2 * n * co * ci * _taps(h, k, stride, padding) ** 2
    assert got["instructions"] == 3
    assert got["convolution"] == 3 * fwd
