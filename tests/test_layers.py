"""StyleGAN2 layers against NumPy loops written from the definitions (NVlabs training/networks.py)."""
import numpy as np
import pytest
import tensorflow as tf

from histaug_tf.gan import layers as L
from histaug_tf.ops import polyphase

RNG = np.random.default_rng(1234)
SQRT2 = np.sqrt(2.0)


def lrelu(x, alpha=0.2):
    return np.where(x >= 0, x, alpha * x)


def fir_filter():
    f = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float64)
    return f / f.sum()


def np_fir_valid(x, f, pad0, pad1):
    """Zero-pad H and W by (pad0, pad1), then true 2-D convolution with f, VALID. x: [N,H,W,C]."""
    x = np.pad(x, [(0, 0), (pad0, pad1), (pad0, pad1), (0, 0)])
    fh, fw = f.shape
    n, h, w, c = x.shape
    out = np.zeros([n, h - fh + 1, w - fw + 1, c])
    for y in range(out.shape[1]):
        for xx in range(out.shape[2]):
            for i in range(fh):
                for j in range(fw):
                    out[:, y, xx] += f[fh - 1 - i, fw - 1 - j] * x[:, y + i, xx + j]
    return out


def np_modconv(x, w, s, demodulate=True, up=1, noise=None):
    """Per-sample modulate / demodulate / convolve.

    up=1: correlation with padding k//2 (NVlabs flip_weight=True).
    up=2: transposed convolution (stride 2, no padding, the weight not flipped, i.e. NVlabs
    flip_weight=False) then the [1,3,3,1] FIR filter with gain 4, padding 1 on each side.
    """
    n, h, wd, cin = x.shape
    k, _, _, cout = w.shape
    outs = []
    for b in range(n):
        wb = w * s[b][None, None, :, None]                        # modulate
        if demodulate:
            d = 1.0 / np.sqrt((wb ** 2).sum(axis=(0, 1, 2)) + 1e-8)
            wb = wb * d[None, None, None, :]                      # demodulate
        if up == 1:
            p = k // 2
            xp = np.pad(x[b], [(p, p), (p, p), (0, 0)])
            o = np.zeros([h, wd, cout])
            for yy in range(h):
                for xx in range(wd):
                    patch = xp[yy:yy + k, xx:xx + k, :]           # [k,k,I]
                    o[yy, xx] = np.tensordot(patch, wb, axes=([0, 1, 2], [0, 1, 2]))
        else:
            t = np.zeros([2 * h + k - 2, 2 * wd + k - 2, cout])   # (H-1)*2 + k
            for a in range(h):
                for c_ in range(wd):
                    t[2 * a:2 * a + k, 2 * c_:2 * c_ + k] += np.tensordot(x[b, a, c_], wb, axes=([0], [2]))
            o = np_fir_valid(t[None], fir_filter() * 4, 1, 1)[0]
        outs.append(o)
    out = np.stack(outs)
    if noise is not None:
        out = out + noise
    return out


@pytest.mark.parametrize("up,k,demod", [(1, 3, True), (1, 1, False), (2, 3, True), (1, 3, False)])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("conv_impl", polyphase.IMPLS)
def test_modulated_conv2d_matches_numpy(up, k, demod, fused, conv_impl):
    n, h, cin, cout = 3, 5, 4, 6
    x = RNG.standard_normal([n, h, h, cin]).astype(np.float32)
    w = RNG.standard_normal([k, k, cin, cout]).astype(np.float32)
    s = (RNG.standard_normal([n, cin]) + 1).astype(np.float32)
    f = L.setup_resample_filter([1, 3, 3, 1])  # separable, as the layers use it
    with polyphase.default_impl(conv_impl):
        got = L.modulated_conv2d(tf.constant(x), tf.constant(w), tf.constant(s), up=up,
                                 padding=k // 2, resample_filter=f, demodulate=demod,
                                 flip_weight=(up == 1), fused_modconv=fused).numpy()
    ref = np_modconv(x.astype(np.float64), w.astype(np.float64), s.astype(np.float64),
                     demodulate=demod, up=up)
    assert got.shape == ref.shape == (n, h * up, h * up, cout)
    scale = max(1.0, np.abs(ref).max())
    np.testing.assert_allclose(got, ref, atol=1e-4 * scale, rtol=0)


@pytest.mark.parametrize("up", [1, 2])
def test_fused_and_nonfused_agree(up):
    x = tf.constant(RNG.standard_normal([4, 8, 8, 5]), tf.float32)
    w = tf.constant(RNG.standard_normal([3, 3, 5, 7]), tf.float32)
    s = tf.constant(RNG.standard_normal([4, 5]) + 1, tf.float32)
    f = L._fir.setup_filter([1, 3, 3, 1])
    noise = tf.constant(RNG.standard_normal([1, 8 * up, 8 * up, 1]), tf.float32)
    a = L.modulated_conv2d(x, w, s, noise=noise, up=up, padding=1, resample_filter=f,
                           flip_weight=(up == 1), fused_modconv=False)
    b = L.modulated_conv2d(x, w, s, noise=noise, up=up, padding=1, resample_filter=f,
                           flip_weight=(up == 1), fused_modconv=True)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)


def test_fully_connected_equalized_lr():
    layer = L.FullyConnectedLayer(6, 4, activation="lrelu", lr_multiplier=0.01, bias_init=0.5)
    layer.build()
    # Stored unscaled: init N(0, 1) / lr_multiplier.
    assert tuple(layer.weight.shape) == (6, 4)
    assert 30 < np.std(layer.weight.numpy()) < 300
    np.testing.assert_array_equal(layer.bias.numpy(), np.full(4, 0.5, np.float32))
    W = RNG.standard_normal([6, 4]).astype(np.float32)
    b = RNG.standard_normal([4]).astype(np.float32)
    layer.weight.assign(W)
    layer.bias.assign(b)
    x = RNG.standard_normal([3, 6]).astype(np.float32)
    ref = lrelu(x @ (W * 0.01 / np.sqrt(6)) + b * 0.01) * SQRT2
    np.testing.assert_allclose(layer(tf.constant(x)).numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("conv_impl", polyphase.IMPLS)
def test_conv2d_layer_down2_matches_numpy(conv_impl):
    """D conv1: FIR (pad 2) then stride-2 correlation, weight gain 1/sqrt(in*9), lrelu*sqrt2*gain."""
    layer = L.Conv2dLayer(3, 5, kernel_size=3, activation="lrelu", down=2, conv_clamp=0.7)
    layer.build()
    W = RNG.standard_normal([3, 3, 3, 5]).astype(np.float32)
    b = RNG.standard_normal([5]).astype(np.float32)
    layer.weight.assign(W)
    layer.bias.assign(b)
    x = RNG.standard_normal([2, 8, 8, 3]).astype(np.float32)
    gain = np.sqrt(0.5)
    with polyphase.default_impl(conv_impl):
        got = layer(tf.constant(x), gain=gain).numpy()
    y = np_fir_valid(x.astype(np.float64), fir_filter(), 2, 2)  # [2, 9, 9, 3]
    Wg = W / np.sqrt(3 * 9)
    ref = np.zeros([2, 4, 4, 5])
    for i in range(4):
        for j in range(4):
            ref[:, i, j] = np.tensordot(y[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3], Wg, axes=([1, 2, 3], [0, 1, 2]))
    ref = np.clip(lrelu(ref + b) * SQRT2 * gain, -0.7 * gain, 0.7 * gain)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_conv2d_layer_skip_1x1_down2_no_bias():
    layer = L.Conv2dLayer(2, 3, kernel_size=1, bias=False, down=2)
    layer.build()
    assert layer.bias is None and len(layer.trainable_variables) == 1
    W = RNG.standard_normal([1, 1, 2, 3]).astype(np.float32)
    layer.weight.assign(W)
    x = RNG.standard_normal([1, 6, 6, 2]).astype(np.float32)
    y = np_fir_valid(x.astype(np.float64), fir_filter(), 1, 1)[:, ::2, ::2]  # [1, 3, 3, 2]
    ref = np.tensordot(y, W[0, 0] / np.sqrt(2), axes=([3], [0]))
    np.testing.assert_allclose(layer(tf.constant(x)).numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("group,nch", [(2, 1), (4, 2), (None, 1)])
def test_minibatch_std_matches_numpy(group, nch):
    n, h, c = 4, 3, 6
    x = RNG.standard_normal([n, h, h, c]).astype(np.float32)
    got = L.MinibatchStdLayer(group, nch)(tf.constant(x)).numpy()
    G = n if group is None else min(group, n)
    groups = n // G
    ref_extra = np.zeros([n, h, h, nch])
    for j in range(groups):
        members = [g * groups + j for g in range(G)]  # sample g*n + j belongs to group j
        for fidx in range(nch):
            chans = range(fidx * (c // nch), (fidx + 1) * (c // nch))
            v = x[members][..., list(chans)].astype(np.float64)
            sd = np.sqrt(v.var(axis=0) + 1e-8).mean()
            for m in members:
                ref_extra[m, :, :, fidx] = sd
    np.testing.assert_allclose(got[..., :c], x)
    np.testing.assert_allclose(got[..., c:], ref_extra, atol=1e-5)


def test_synthesis_layer_noise_modes_and_variables():
    layer = L.SynthesisLayer(4, 5, w_dim=6, resolution=8, up=2)
    layer.build()
    names = sorted(v.path.split("/", 1)[-1] for v in layer.variables)
    assert {tuple(v.shape) for v in layer.trainable_variables} == {(6, 4), (4,), (3, 3, 4, 5), (), (5,)}
    assert [tuple(v.shape) for v in layer.non_trainable_variables] == [(8, 8)], names
    assert layer.noise_strength.numpy() == 0.0
    np.testing.assert_array_equal(layer.affine.bias.numpy(), np.ones(4, np.float32))
    x = tf.constant(RNG.standard_normal([2, 4, 4, 4]), tf.float32)
    w = tf.constant(RNG.standard_normal([2, 6]), tf.float32)
    base = layer(x, w, noise_mode="none").numpy()
    # strength 0: every noise mode gives the same output
    np.testing.assert_allclose(layer(x, w, noise_mode="random").numpy(), base, atol=1e-6)
    layer.noise_strength.assign(0.5)
    c1 = layer(x, w, noise_mode="const").numpy()
    np.testing.assert_allclose(layer(x, w, noise_mode="const").numpy(), c1)
    r1 = layer(x, w, noise_mode="random").numpy()
    assert np.abs(r1 - c1).max() > 1e-3
    # const noise enters before bias/lrelu: where pre-activations are positive, the difference is
    # noise_const * strength * sqrt(2).
    pos = (base > 0) & (c1 > 0)
    diff = (c1 - base) / SQRT2
    expect = np.broadcast_to(layer.noise_const.numpy()[None, :, :, None] * 0.5, diff.shape)
    np.testing.assert_allclose(diff[pos], expect[pos], atol=1e-4)
    with pytest.raises(ValueError):
        layer(x, w, noise_mode="bogus")


def test_random_noise_under_noise_seed_is_a_function_of_seed_and_draw():
    """Per-layer noise inside ``noise_seed`` (the trainer's): the same seed gives the same noise
    in every trace and process (no RNG state), each draw of a block its own, another seed other
    noise; outside, TensorFlow's global RNG (a new draw per call)."""
    layer = L.SynthesisLayer(4, 5, w_dim=6, resolution=8, up=2)
    layer.build()
    layer.noise_strength.assign(1.0)
    x = tf.constant(RNG.standard_normal([2, 4, 4, 4]), tf.float32)
    w = tf.constant(RNG.standard_normal([2, 6]), tf.float32)

    @tf.function
    def two_calls(seed):
        with L.noise_seed(seed):
            return layer(x, w), layer(x, w)

    s1, s2 = tf.constant([3, 4], tf.int64), tf.constant([3, 5], tf.int64)
    a, b = [t.numpy() for t in two_calls(s1)]
    a2, b2 = [t.numpy() for t in two_calls(s1)]
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)
    assert np.abs(a - b).max() > 1e-3  # two draws in one block: two streams
    assert np.abs(two_calls(s2)[0].numpy() - a).max() > 1e-3
    with L.noise_seed(s1):  # eagerly: the same numbers as traced
        np.testing.assert_allclose(layer(x, w).numpy(), a, rtol=1e-5, atol=1e-5)
    assert np.abs(layer(x, w).numpy() - layer(x, w).numpy()).max() > 1e-3  # outside: stateful
    with L.noise_seed(None):
        assert np.abs(layer(x, w).numpy() - layer(x, w).numpy()).max() > 1e-3


def test_noise_pool_is_one_draw_sliced_in_announced_order():
    """``noise_pool``: the next draws are consecutive slices of one stateless normal draw keyed by
    the block's next draw number (here 0), reshaped per image; a size other than announced, or a
    draw announced and not taken, is an error."""
    seed = tf.constant([3, 4], tf.int64)
    with L.noise_seed(seed), L.noise_pool(2, [16, 64, 64]):
        got = [L.random_noise([2, 4, 4, 1]), L.random_noise([2, 8, 8, 1]),
               L.random_noise([2, 8, 8, 1])]
    whole = tf.random.stateless_normal(
        [2, 144], tf.random.experimental.stateless_fold_in(seed, 0, alg="philox"),
        alg="philox").numpy()
    np.testing.assert_array_equal(got[0].numpy(), whole[:, :16].reshape(2, 4, 4, 1))
    np.testing.assert_array_equal(got[1].numpy(), whole[:, 16:80].reshape(2, 8, 8, 1))
    np.testing.assert_array_equal(got[2].numpy(), whole[:, 80:].reshape(2, 8, 8, 1))
    with pytest.raises(AssertionError, match="does not match"):
        with L.noise_seed(seed), L.noise_pool(2, [16]):
            L.random_noise([2, 8, 8, 1])
    with pytest.raises(AssertionError, match="1 of 2 announced"):
        with L.noise_pool(2, [16, 16]):
            L.random_noise([2, 4, 4, 1])
    assert not L._pool_stack()


def test_torgb_no_demodulation():
    layer = L.ToRGBLayer(4, 3, w_dim=5)
    layer.build()
    W = RNG.standard_normal([1, 1, 4, 3]).astype(np.float32)
    layer.weight.assign(W)
    layer.bias.assign(np.array([0.1, -0.2, 0.3], np.float32))
    x = RNG.standard_normal([2, 3, 3, 4]).astype(np.float32)
    w = RNG.standard_normal([2, 5]).astype(np.float32)
    styles = (w @ (layer.affine.weight.numpy() / np.sqrt(5)) + 1) / np.sqrt(4)
    ref = np.einsum("nhwi,io,ni->nhwo", x, W[0, 0], styles) + np.array([0.1, -0.2, 0.3])
    np.testing.assert_allclose(layer(tf.constant(x), tf.constant(w)).numpy(), ref, atol=1e-5)


def test_normalize_2nd_moment():
    x = RNG.standard_normal([3, 7]).astype(np.float32) * 5
    got = L.normalize_2nd_moment(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, x / np.sqrt((x ** 2).mean(axis=1, keepdims=True) + 1e-8), rtol=1e-5)


def test_tf_variable_is_the_variable_behind_a_keras_variable():
    """``tf_variable``: a Keras 3 variable's own ``tf.Variable`` (what a GradientTape watches and
    the trainer, EMA and variable copies use); a plain ``tf.Variable`` or a tensor unchanged
    (``tf.Variable.value`` is a method there, not a variable)."""
    layer = L.FullyConnectedLayer(3, 2)
    layer.build()
    kv = layer.weight
    assert not isinstance(kv, tf.Variable) and isinstance(L.tf_variable(kv), tf.Variable)
    assert L.tf_variable(kv) is kv.value
    plain, t = tf.Variable([1.0]), tf.constant([2.0])
    assert L.tf_variable(plain) is plain and L.tf_variable(t) is t
