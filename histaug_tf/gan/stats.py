"""Training statistics collected by name (the reference's ``training_stats``, per tick).

Each phase reports ``{name: per-sample values}``; the step adds, per name, the sum, the sum of
squares and the count over all replicas to float64 variables (inside the compiled phase), and the
loop reads the means and standard deviations once per tick. The names are those the loss declares
(``loss.StyleGAN2Loss.STAT_NAMES``); a phase reporting a name nobody declared fails while it is
traced instead of being dropped.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf


def moments(values):
    """``[sum, sum of squares, count]`` (float32) of one reported tensor."""
    v = tf.cast(values, tf.float32)
    return tf.stack([tf.reduce_sum(v), tf.reduce_sum(tf.square(v)), tf.cast(tf.size(v), tf.float32)])


class TrainingStats:
    """Per-name accumulators of ``moments`` (created outside the strategy scope: plain variables
    fed with values already summed over replicas)."""

    def __init__(self, names):
        self._acc = {n: tf.Variable(tf.zeros([3], tf.float64), trainable=False,
                                    name="stat_" + n.replace("/", "_"))
                     for n in names}

    @property
    def names(self):
        return tuple(self._acc)

    def add(self, name, summed_moments):
        """Add ``[sum, sum², n]`` of ``name`` (any context, also inside XLA)."""
        if name not in self._acc:
            raise KeyError(f"training statistic {name!r} is not declared "
                           f"(declared: {', '.join(self._acc)})")
        self._acc[name].assign_add(tf.cast(summed_moments, tf.float64))

    def read(self):
        """``{name: mean, name/std: std}`` of every name reported since the last read; restarts
        the sums."""
        out = {}
        for name, var in self._acc.items():
            s, s2, n = var.numpy()
            if n > 0:
                mean = s / n
                out[name] = float(mean)
                out[name + "/std"] = float(np.sqrt(max(s2 / n - mean * mean, 0.0)))
            var.assign(tf.zeros([3], tf.float64))
        return out
