"""``gan/adam.FusedAdam`` (Keras' Adam with ``ResourceApplyAdam`` per variable) against Adam
written out in NumPy in float64, and its checkpoints against Keras' Adam's."""
import numpy as np
import pytest
import tensorflow as tf
import keras

from histaug_tf.gan.adam import FusedAdam


def _numpy_adam(p0, grads, lr, b1, b2, eps):
    """Adam (Kingma & Ba, with the bias corrections folded into the step size, as Keras and
    PyTorch do), float64."""
    p = [x.astype(np.float64) for x in p0]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    for t, gs in enumerate(grads, start=1):
        alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for i, g in enumerate(gs):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            p[i] = p[i] - alpha * m[i] / (np.sqrt(v[i]) + eps)
    return p, m, v


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("b1", [0.0, 0.5])
def test_fused_adam_matches_numpy_adam_over_steps(jit, b1):
    """Four steps on two variables: weights and
    both moments equal the NumPy Adam, eagerly inside ``tf.function`` and in an XLA program;
    the iteration counter advances once per step."""
    rng = np.random.RandomState(1)
    p0 = [rng.randn(3, 4).astype(np.float32), rng.randn(5).astype(np.float32)]
    grads = [[rng.randn(*x.shape).astype(np.float32) for x in p0] for _ in range(4)]
    lr, b2, eps = 0.0025 * 16 / 17, 0.99 ** (16 / 17), 1e-8
    variables = [tf.Variable(x) for x in p0]
    opt = FusedAdam(lr, beta_1=b1, beta_2=b2, epsilon=eps)
    opt.build(variables)
    step = tf.function(lambda gs: opt.apply_gradients(zip(gs, variables)), jit_compile=jit,
                       autograph=False)
    for gs in grads:
        step([tf.constant(g) for g in gs])
    want_p, want_m, want_v = _numpy_adam(p0, grads, lr, b1, b2, eps)
    assert int(opt.iterations.numpy()) == 4
    for i, var in enumerate(variables):
        idx = opt._get_variable_index(var)
        np.testing.assert_allclose(var.numpy(), want_p[i], rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(opt._momentums[idx].numpy(), want_m[i], rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(opt._velocities[idx].numpy(), want_v[i], rtol=2e-6,
                                   atol=1e-9)


def test_fused_adam_checkpoint_is_keras_adams_both_ways(tmp_path):
    """A run checkpointed with Keras' Adam (earlier versions of the trainer) resumes with
    FusedAdam and the other way round: same variables under the same checkpoint keys."""
    def make(cls):
        v = tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3))
        opt = cls(0.01, beta_1=0.0, beta_2=0.99, epsilon=1e-8)
        opt.build([v])
        return v, opt

    for src_cls, dst_cls in ((keras.optimizers.Adam, FusedAdam),
                             (FusedAdam, keras.optimizers.Adam)):
        v, opt = make(src_cls)
        opt.apply_gradients([(tf.ones([2, 3]), v)])
        path = tf.train.Checkpoint(v=v, opt=opt).write(str(tmp_path / src_cls.__name__))
        v2, opt2 = make(dst_cls)
        tf.train.Checkpoint(v=v2, opt=opt2).read(path).assert_consumed()
        assert int(opt2.iterations.numpy()) == 1
        for a, b in zip(opt.variables, opt2.variables):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(v.numpy(), v2.numpy())
