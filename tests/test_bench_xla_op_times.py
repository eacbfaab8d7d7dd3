"""benchmarks/xla_op_times.py: a profile of an XLA program is summarised per executed instruction,
and the big instruction of a deliberately lopsided program gets the larger share."""
import os
import sys

import pytest
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
from xla_op_times import summarise  # noqa: E402


def test_profile_summary_names_the_expensive_instruction(tmp_path):
    big = tf.random.normal([384, 384])
    small = tf.random.normal([8, 8])

    @tf.function(jit_compile=True)
    def f(a, b):
        # one large matrix product and a small, cheap element-wise tail
        return tf.reduce_sum(tf.matmul(a, a)) + tf.reduce_sum(b * 2.0)

    f(big, small).numpy()
    tf.profiler.experimental.start(str(tmp_path))
    for _ in range(20):
        f(big, small).numpy()
    tf.profiler.experimental.stop()
    out = summarise(str(tmp_path), top=5)
    assert out["thread_ms_total"] > 0
    kinds = out["by_kind_ms"]
    # names are instructions, never the program's own frame (named after the function) nor the
    # executor's or Python's
    assert "f" not in kinds, kinds
    assert not any("::" in k or k.startswith(("__inference", "Eager")) for k in kinds), kinds
    # the product (an XLA dot, or a fusion holding it) dominates; the 8x8 tail does not
    top, top_ms = next(iter(kinds.items()))
    assert top_ms >= 0.5 * out["thread_ms_total"], kinds
    assert "dot" in top or "ynn" in top or "matmul" in top.lower(), kinds


def test_not_a_profile_directory(tmp_path):
    with pytest.raises(SystemExit, match="not a profile directory"):
        summarise(str(tmp_path))
