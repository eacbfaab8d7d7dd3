"""Adam for the GAN trainer: Keras' Adam with each variable's update one fused TensorFlow op.

``FusedAdam`` is ``keras.optimizers.Adam`` (same variables, checkpoint layout, distribution
handling, iteration counter and learning rate) except that ``update_step`` runs TensorFlow's
``ResourceApplyAdam`` on the variable and its two moments instead of Keras' dozen element-wise
ops. It computes the same update:

    alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
    m += (g - m) * (1 - beta_1);  v += (g^2 - v) * (1 - beta_2)
    var -= m * alpha / (sqrt(v) + epsilon)

with ``t`` the iteration + 1. The one difference in rounding: the op forms ``1 - beta`` in the
variable's dtype, Keras in Python floats before the cast (a relative difference of ~1e-6 in that
factor, far below the rounding of the gradients themselves).

Why: each Keras update adds ~40 graph nodes per variable (175 variable updates in the four phase
programs of the demo configuration), among them two ``Sqrt``, which TensorFlow lowers to XLA
through a per-op MLIR pipeline (~3 ms per op instance, paid by every process that compiles or
loads a phase from the persistent cache). The fused op is one node whose XLA lowering is direct,
and one kernel without XLA. Measured in docs/speed.md ("Warm-up: fewer ops that TensorFlow
lowers one at a time").
"""
from __future__ import annotations

import keras
import tensorflow as tf


class FusedAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` whose per-variable update is ``ResourceApplyAdam``
    (module docstring). Options the fused op does not cover (``amsgrad``) use Keras' update."""

    _scalars = None  # dtype -> the step's shared scalar inputs, during one update

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        # One set of step scalars (beta powers, lr, betas, epsilon) per update of all variables,
        # not one per variable: ~10 graph nodes fewer per variable in every traced phase.
        self._scalars = {}
        try:
            return super()._distributed_tf_update_step(distribution, grads_and_vars,
                                                       learning_rate)
        finally:
            self._scalars = None

    def _step_scalars(self, dtype, learning_rate):
        cached = None if self._scalars is None else self._scalars.get(dtype)
        if cached is not None:
            return cached
        t = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.constant(self.beta_1, dtype)
        beta_2 = tf.constant(self.beta_2, dtype)
        out = dict(beta1_power=tf.pow(beta_1, t), beta2_power=tf.pow(beta_2, t),
                   lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
                   epsilon=tf.constant(self.epsilon, dtype))
        if self._scalars is not None:
            self._scalars[dtype] = out
        return out

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        # (Keras 3 variables and tf.Variables both have ``handle``)
        dtype = tf.as_dtype(variable.dtype)
        i = self._get_variable_index(variable)
        m, v = self._momentums[i], self._velocities[i]
        tf.raw_ops.ResourceApplyAdam(var=variable.handle, m=m.handle, v=v.handle,
                                     grad=tf.cast(gradient, dtype),
                                     **self._step_scalars(dtype, learning_rate))
