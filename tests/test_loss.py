"""histaug_tf.gan.loss against closed forms / direct NumPy computations."""
import numpy as np
import pytest
import tensorflow as tf

from histaug_tf.gan import loss as L
from _training_tiny import build_tiny, tiny_images


def softplus(x):
    return np.logaddexp(0.0, x)


def d_numpy(D, img):
    v = D.v.numpy()
    return (np.tanh(img) * v).sum(axis=(1, 2, 3)) * D.scale + D.b.numpy()


def test_r1_closed_form_and_its_weight_gradient():
    G, D, _ = build_tiny(seed=1)
    gamma = 3.0
    loss = L.StyleGAN2Loss(G, D, r1_gamma=gamma)
    x = tiny_images(5, seed=2)
    with tf.GradientTape() as tape:
        per_sample, stats = loss.D_r1(tf.constant(x), tf.zeros([5, 0]))
        total = tf.reduce_sum(per_sample)
    dv = tape.gradient(total, D.v)
    # D(x) = s * sum(v * tanh(x)) + b  =>  dD/dx = s * v * (1 - tanh(x)^2)
    v, s = D.v.numpy(), D.scale
    g = s * v[None] * (1 - np.tanh(x) ** 2)
    pen = (g ** 2).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(stats["Loss/r1_penalty"].numpy(), pen, rtol=1e-5)
    np.testing.assert_allclose(per_sample.numpy(), gamma / 2 * pen, rtol=1e-5)
    # d/dv sum_n gamma/2 * s^2 v^2 (1 - tanh^2)^2 = gamma * s^2 * v * sum_n (1 - tanh^2)^2
    expect = gamma * s * s * v * ((1 - np.tanh(x) ** 2) ** 2).sum(axis=0)
    np.testing.assert_allclose(dv.numpy(), expect, rtol=1e-4, atol=1e-9)


def _np_G(G, z, mix_z=None, cutoff=None):
    fc = G.mapping.fc.numpy()
    w = z @ fc
    w = np.where(w > 0, w, 0.2 * w)
    ws = np.repeat(w[:, None, :], G.num_ws, axis=1)
    if mix_z is not None:
        w2 = mix_z @ fc
        w2 = np.where(w2 > 0, w2, 0.2 * w2)
        ws[:, cutoff:] = w2[:, None, :]
    A = G.synthesis.A.numpy()
    u = ws.reshape(len(z), -1) @ A
    return ws, u, A


def test_path_length_equals_direct_computation():
    G, D, _ = build_tiny(seed=3, res=4, ch=3, num_ws=3, w_dim=4)
    loss = L.StyleGAN2Loss(G, D, pl_weight=2.0, pl_decay=0.01, noise_mode="const")
    rnd = np.random.RandomState(0)
    z = rnd.randn(3, 4).astype(np.float32)
    noise = rnd.randn(3, 4, 4, 3).astype(np.float32)
    pl_mean0 = 0.7
    per, new_mean, stats, _ = loss.G_pl(tf.constant(z), tf.zeros([3, 0]), tf.constant(noise),
                                        tf.constant(pl_mean0))
    # Direct: img = tanh(u), u = ws_flat @ A; d sum(img * n') / d ws = ((1 - tanh(u)^2) n') @ A^T
    ws, u, A = _np_G(G, z)
    n_scaled = noise.reshape(3, -1) / np.sqrt(4 * 4)
    gw = (((1 - np.tanh(u) ** 2) * n_scaled) @ A.T).reshape(3, 3, 4)
    lengths = np.sqrt((gw ** 2).sum(axis=2).mean(axis=1))
    mean = pl_mean0 + (lengths.mean() - pl_mean0) * 0.01
    np.testing.assert_allclose(float(new_mean), mean, rtol=1e-5)
    np.testing.assert_allclose(stats["Loss/pl_penalty"].numpy(), (lengths - mean) ** 2,
                               rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(per.numpy(), 2.0 * (lengths - mean) ** 2, rtol=1e-4, atol=1e-9)


def test_path_length_with_style_mixing_uses_mixed_ws():
    G, D, _ = build_tiny(seed=4)
    loss = L.StyleGAN2Loss(G, D, noise_mode="const")
    rnd = np.random.RandomState(1)
    z, z2 = rnd.randn(2, 4).astype(np.float32), rnd.randn(2, 4).astype(np.float32)
    noise = rnd.randn(2, 4, 4, 3).astype(np.float32)
    _, _, stats, _ = loss.G_pl(tf.constant(z), tf.zeros([2, 0]), tf.constant(noise),
                               tf.constant(0.0), mix_z=tf.constant(z2),
                               cutoff=tf.constant(1))
    ws, u, A = _np_G(G, z, z2, 1)
    gw = (((1 - np.tanh(u) ** 2) * noise.reshape(2, -1) / 4.0) @ A.T).reshape(2, 3, 4)
    lengths = np.sqrt((gw ** 2).sum(axis=2).mean(axis=1))
    mean = lengths.mean() * 0.01
    np.testing.assert_allclose(stats["Loss/pl_penalty"].numpy(), (lengths - mean) ** 2,
                               rtol=1e-4)


def test_nonsaturating_logistic_losses():
    G, D, _ = build_tiny(seed=5)
    loss = L.StyleGAN2Loss(G, D, noise_mode="const")
    rnd = np.random.RandomState(2)
    z = rnd.randn(4, 4).astype(np.float32)
    real = tiny_images(4, seed=7)
    ws, u, _ = _np_G(G, z)
    fake = np.tanh(u).reshape(4, 4, 4, 3)
    g_loss, _, w0 = loss.G_main(tf.constant(z), tf.zeros([4, 0]))
    np.testing.assert_allclose(g_loss.numpy(), softplus(-d_numpy(D, fake)), rtol=1e-5)
    np.testing.assert_allclose(w0.numpy(), ws[:, 0], rtol=1e-5)
    d_loss, stats, _ = loss.D_main(tf.constant(real), tf.zeros([4, 0]), tf.constant(z),
                                   tf.zeros([4, 0]))
    expect = softplus(d_numpy(D, fake)) + softplus(-d_numpy(D, real))
    np.testing.assert_allclose(d_loss.numpy(), expect, rtol=1e-5)
    np.testing.assert_allclose(stats["Loss/signs/real"].numpy(), np.sign(d_numpy(D, real)))


def test_style_mixing_cutoff_distribution():
    G, D, _ = build_tiny(num_ws=6)
    loss = L.StyleGAN2Loss(G, D, style_mixing_prob=0.9)
    fn = tf.function(loss.mixing_cutoff)
    cut = np.array([int(fn(tf.constant([7, i], tf.int64))) for i in range(2000)])
    assert cut.min() == 1 and cut.max() == 6
    frac_none = (cut == 6).mean()
    assert abs(frac_none - 0.1) < 0.03  # binomial sd 0.0067
    counts = np.bincount(cut[cut < 6], minlength=6)[1:]
    assert counts.min() > 0.8 * counts.mean()
    loss0 = L.StyleGAN2Loss(G, D, style_mixing_prob=0.0)
    assert int(loss0.mixing_cutoff(tf.constant([1, 2], tf.int64))) == 6


def test_run_G_style_mixing_rows():
    G, D, _ = build_tiny(num_ws=5)
    loss = L.StyleGAN2Loss(G, D, noise_mode="const")
    rnd = np.random.RandomState(3)
    z, z2 = rnd.randn(2, 4).astype(np.float32), rnd.randn(2, 4).astype(np.float32)
    _, ws, _ = loss.run_G(tf.constant(z), tf.zeros([2, 0]), tf.constant(z2), tf.constant(2))
    ws_np, _, _ = _np_G(G, z, z2, 2)
    np.testing.assert_allclose(ws.numpy(), ws_np, rtol=1e-5)


def test_lazy_regularization_and_ema_schedule():
    lr, betas = L.lazy_regularization(0.0025, (0.0, 0.99), 16)
    assert lr == pytest.approx(0.0025 * 16 / 17)
    assert betas == pytest.approx((0.0, 0.99 ** (16 / 17)))
    assert L.lazy_regularization(0.002, (0.0, 0.99), None) == (0.002, (0.0, 0.99))
    # ema_kimg 10, rampup 0.05: at 4000 images ema_nimg = 200 -> beta = 0.5 ** (32/200)
    assert L.ema_beta(32, 4000, 10, 0.05) == pytest.approx(0.5 ** (32 / 200))
    assert L.ema_beta(32, 10**7, 10, 0.05) == pytest.approx(0.5 ** (32 / 10000))
    assert L.ema_beta(32, 0, 10, 0.05) == pytest.approx(0.0)  # first step copies G
    assert L.ema_beta(32, 0, 10, None) == pytest.approx(0.5 ** (32 / 10000))


def test_update_ema_lerps_params_and_copies_buffers():
    G, D, G_ema = build_tiny(seed=6)
    for v in G_ema.trainable_variables:
        v.assign(v + 1.0)
    G.mapping.w_avg.assign(np.arange(4, dtype=np.float32))
    before = [v.numpy() for v in G_ema.trainable_variables]
    L.update_ema(G, G_ema, 0.9)
    for p, e, b in zip(G.trainable_variables, G_ema.trainable_variables, before):
        np.testing.assert_allclose(e.numpy(), p.numpy() + (b - p.numpy()) * 0.9, rtol=1e-6)
    np.testing.assert_array_equal(G_ema.mapping.w_avg.numpy(), np.arange(4))
