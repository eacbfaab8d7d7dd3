"""ADA: the augment probability ``p`` and the heuristic that adapts it (Karras et al. 2020, §3).

One object owns everything of ADA that outlives a step, and is checkpointed as itself (``ada/``):
``p`` (the variable the augment pipe reads), and the sums of ``sign(D(real))`` and of their count
since the last adjustment. The trainer's phases call :meth:`Ada.accumulate` with the signs of the
real logits, summed over all replicas (Dmain, Dreg and Dboth all report them, as the reference's
``Loss/signs/real``); every ``interval`` steps :meth:`Ada.adjust` moves ``p`` as the reference's
``training_loop`` does::

    r_t = sum(signs) / count
    p  <- max(p + sign(r_t - target) * batch * interval / (kimg * 1000), 0)

and restarts the sums. With ``target=None`` (fixed ``p``, or no augmentation) ``p`` never moves.
"""
from __future__ import annotations

import math

import tensorflow as tf


class Ada(tf.Module):
    """ADA state and update.

    Args:
      p: the augment pipe's probability variable (``AugmentPipe.p``), or None for a run without
        an augment pipe (``p`` is then a variable of its own, always 0).
      batch_size: the GLOBAL batch (images per step over all replicas).
      target: ``ada_target`` (reference 0.6), or None: ``p`` is fixed.
      interval: ``ada_interval`` (steps between adjustments, reference 4).
      kimg: ``ada_kimg`` (reference 500: ``p`` can move from 0 to 1 in this many kimg).
    """

    def __init__(self, p=None, *, batch_size, target=None, interval=4, kimg=500.0, name="ada"):
        super().__init__(name=name)
        if p is None:
            target = None
            p = tf.Variable(0.0, trainable=False, dtype=tf.float32, name="p")
        self.p = p
        self.batch_size = int(batch_size)
        self.target = None if target is None else float(target)
        self.interval = int(interval)
        self.kimg = float(kimg)
        if self.interval < 1 or self.kimg <= 0:
            raise ValueError(f"ADA interval {interval} and kimg {kimg} must be positive")
        # Cross-replica sums (the trainer reduces over replicas before accumulating); float64 so
        # that long intervals at large batches add exactly.
        self.sign_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="sign_sum")
        self.sign_count = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="sign_count")

    @property
    def adaptive(self):
        return self.target is not None

    @property
    def step_size(self):
        """How far one adjustment moves ``p``."""
        return self.batch_size * self.interval / (self.kimg * 1000)

    def accumulate(self, sign_sum, count):
        """Add the summed signs of D(real) and their number (any context, also inside XLA)."""
        self.sign_sum.assign_add(tf.cast(sign_sum, tf.float64))
        self.sign_count.assign_add(tf.cast(count, tf.float64))

    def due(self, steps_done):
        """Whether the adjustment runs after ``steps_done`` steps (reference: every
        ``interval`` steps)."""
        return self.adaptive and steps_done % self.interval == 0

    def adjust(self):
        """One ADA step from the accumulated signs; restarts the sums. Returns r_t (NaN when
        nothing was accumulated, and then ``p`` is unchanged)."""
        count = float(self.sign_count.numpy())
        if count <= 0:
            return math.nan
        rt = tf.math.divide_no_nan(tf.cast(self.sign_sum, tf.float32), tf.cast(count, tf.float32))
        if self.adaptive:
            move = tf.sign(rt - self.target) * self.step_size
            self.p.assign(tf.maximum(self.p + move, 0.0))
        self.sign_sum.assign(0.0)
        self.sign_count.assign(0.0)
        return float(rt)
