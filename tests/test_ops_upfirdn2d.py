"""upfirdn2d against a direct NumPy implementation written here (independent of the TF code)."""
import numpy as np
import pytest
import tensorflow as tf

from histaug_tf.ops import upfirdn2d as U


# ---------------------------------------------------------------- NumPy reference (explicit loops)
def np_upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """x: float64 NHWC. f: 1-D (separable) or 2-D [fh, fw] array. The textbook definition."""
    upx, upy = (up, up) if np.isscalar(up) else up
    downx, downy = (down, down) if np.isscalar(down) else down
    if np.isscalar(padding):
        padding = [padding] * 4
    elif len(padding) == 2:
        padding = [padding[0], padding[0], padding[1], padding[1]]
    px0, px1, py0, py1 = padding
    n, h, w, c = x.shape
    # 1. zero insertion: pixel (i, j) goes to (i*upy, j*upx), zeros elsewhere.
    xu = np.zeros((n, h * upy, w * upx, c))
    for i in range(h):
        for j in range(w):
            xu[:, i * upy, j * upx, :] = x[:, i, j, :]
    # 2. pad with zeros (positive) / crop (negative), per side.
    H, W = xu.shape[1], xu.shape[2]
    xp = np.zeros((n, H + py0 + py1, W + px0 + px1, c))
    for i in range(xp.shape[1]):
        for j in range(xp.shape[2]):
            si, sj = i - py0, j - px0
            if 0 <= si < H and 0 <= sj < W:
                xp[:, i, j, :] = xu[:, si, sj, :]
    # 3. 2-D filter: separable 1-D filter means outer(f_y, f_x) with the same taps on both axes.
    f = np.asarray(f, np.float64)
    k2 = np.outer(f, f) if f.ndim == 1 else f
    k2 = k2 * gain
    fh, fw = k2.shape
    oh, ow = xp.shape[1] - fh + 1, xp.shape[2] - fw + 1
    y = np.zeros((n, oh, ow, c))
    for oy in range(oh):
        for ox in range(ow):
            acc = np.zeros((n, c))
            for ky in range(fh):
                for kx in range(fw):
                    if flip_filter:  # correlation: y[o] = sum_k f[k] x[o + k]
                        acc += k2[ky, kx] * xp[:, oy + ky, ox + kx, :]
                    else:  # true convolution over the valid region: y[o] = sum_k f[k] x[o + K - 1 - k]
                        acc += k2[ky, kx] * xp[:, oy + fh - 1 - ky, ox + fw - 1 - kx, :]
            y[:, oy, ox, :] = acc
    # 4. decimation.
    return y[:, ::downy, ::downx, :]


def _random_configs(count, seed):
    rng = np.random.default_rng(seed)
    cfgs = []
    for i in range(count):
        up = [int(rng.choice([1, 2, 4])), int(rng.choice([1, 2, 4]))] if i % 3 == 0 else int(rng.choice([1, 2, 4]))
        down = [int(rng.choice([1, 2, 4])), int(rng.choice([1, 2, 4]))] if i % 4 == 1 else int(rng.choice([1, 2, 4]))
        taps = int(rng.integers(1, 9))
        if i % 2 == 0:
            f = rng.normal(size=[taps])
        else:
            f = rng.normal(size=[int(rng.integers(1, 9)), taps])
        h, w = int(rng.integers(3, 9)), int(rng.integers(3, 9))
        pad = [int(v) for v in rng.integers(-2, 6, size=4)]
        if i % 5 == 0:
            pad = int(rng.integers(0, 4))
        elif i % 5 == 1:
            pad = [int(v) for v in rng.integers(-1, 5, size=2)]
        cfg = dict(x_shape=(2, h, w, int(rng.integers(1, 4))), f=f, up=up, down=down, padding=pad,
                   flip_filter=bool(rng.integers(0, 2)), gain=float(rng.choice([1.0, 2.0, 0.5, 3.0])))
        # Keep only configurations with a non-empty output.
        upx, upy = (up, up) if isinstance(up, int) else up
        p = [pad] * 4 if isinstance(pad, int) else (list(pad) if len(pad) == 4 else [pad[0], pad[0], pad[1], pad[1]])
        fh, fw = (taps, taps) if f.ndim == 1 else f.shape
        if w * upx + p[0] + p[1] - fw + 1 < 1 or h * upy + p[2] + p[3] - fh + 1 < 1:
            continue
        cfgs.append(cfg)
    return cfgs


CONFIGS = _random_configs(48, seed=1234)


def test_enough_configurations_cover_the_space():
    assert len(CONFIGS) >= 30
    ups = {u for c in CONFIGS for u in (c["up"] if isinstance(c["up"], list) else [c["up"]])}
    downs = {d for c in CONFIGS for d in (c["down"] if isinstance(c["down"], list) else [c["down"]])}
    assert ups == {1, 2, 4} and downs == {1, 2, 4}
    assert any(c["f"].ndim == 1 for c in CONFIGS) and any(c["f"].ndim == 2 for c in CONFIGS)
    assert any(np.min(c["padding"]) < 0 for c in CONFIGS) and any(np.max(c["padding"]) > 0 for c in CONFIGS)
    assert any(c["flip_filter"] for c in CONFIGS) and any(c["x_shape"][1] != c["x_shape"][2] for c in CONFIGS)


def _assert_close(got, want):
    scale = max(1.0, float(np.max(np.abs(want))))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


_CASES = []


def _cases():
    """(cfg, x, NumPy result) per configuration, computed once."""
    if not _CASES:
        rng = np.random.default_rng(7)
        for cfg in CONFIGS:
            x = rng.normal(size=cfg["x_shape"])
            want = np_upfirdn2d(x, cfg["f"], cfg["up"], cfg["down"], cfg["padding"], cfg["flip_filter"], cfg["gain"])
            _CASES.append((cfg, x, want))
    return _CASES


# impl=None is 'conv' eagerly and 'slices' in xla_function; the rest cover the remaining pairs.
@pytest.mark.parametrize("jit,impl", [(False, None), (True, None), (False, "slices"), (True, "conv"),
                                      (False, "ref"), (True, "ref")],
                         ids=["eager-auto", "xla-auto", "eager-slices", "xla-conv", "eager-ref",
                              "xla-ref"])
def test_upfirdn2d_matches_numpy(jit, impl):
    for cfg, x, want in _cases():
        kw = dict(up=cfg["up"], down=cfg["down"], padding=cfg["padding"], flip_filter=cfg["flip_filter"],
                  gain=cfg["gain"], impl=impl)
        fn = lambda x_: U.upfirdn2d(x_, tf.constant(cfg["f"], tf.float32), **kw)
        if jit:
            fn = U.xla_function(fn)
        got = fn(tf.constant(x, tf.float32)).numpy()
        assert got.shape == want.shape, (cfg, got.shape, want.shape)
        _assert_close(got, want)


def test_setup_filter_normalisation_flip_gain():
    f = U.setup_filter([1, 3, 3, 1]).numpy()
    np.testing.assert_allclose(f, np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0, rtol=1e-7)
    f = U.setup_filter([1, 2, 3, 4, 5, 6, 7, 8]).numpy()  # >= 8 taps -> separable by default
    assert f.shape == (8,)
    np.testing.assert_allclose(f, np.arange(1, 9) / 36.0, rtol=1e-6)
    f = U.setup_filter([1, 2, 3], flip_filter=True, gain=4, separable=True).numpy()
    np.testing.assert_allclose(f, np.array([3, 2, 1]) / 6.0 * 2.0, rtol=1e-6)  # gain ** (1 / 2)
    f = U.setup_filter([[1, 2], [3, 4]], normalize=False, gain=3).numpy()
    np.testing.assert_allclose(f, [[3, 6], [9, 12]])
    assert U.setup_filter(None).numpy().tolist() == [[1.0]]


def test_wrappers_closed_forms():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 6, 3)).astype(np.float32)
    # upsample2d with the box filter [1, 1] is nearest-neighbour upsampling.
    y = U.upsample2d(x, U.setup_filter([1, 1])).numpy()
    np.testing.assert_allclose(y, x.repeat(2, axis=1).repeat(2, axis=2), rtol=1e-6)
    # downsample2d with [1, 1] is 2x2 average pooling.
    y = U.downsample2d(x, U.setup_filter([1, 1])).numpy()
    np.testing.assert_allclose(y, x.reshape(2, 2, 2, 3, 2, 3).mean(axis=(2, 4)), rtol=1e-5, atol=1e-6)
    # filter2d keeps the shape; zero padding outside.
    f = U.setup_filter([1, 2, 1])
    y = U.filter2d(x, f).numpy()
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    k = np.outer([1, 2, 1], [1, 2, 1]) / 16.0
    want = sum(k[i, j] * xp[:, i:i + 4, j:j + 6] for i in range(3) for j in range(3))
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    # The [1,3,3,1] filter: shapes and DC preservation in the interior.
    f = U.setup_filter([1, 3, 3, 1])
    ones = np.ones((1, 8, 8, 2), np.float32)
    up = U.upsample2d(ones, f).numpy()
    down = U.downsample2d(ones, f).numpy()
    assert up.shape == (1, 16, 16, 2) and down.shape == (1, 4, 4, 2)
    np.testing.assert_allclose(up[:, 2:-2, 2:-2], 1.0, rtol=1e-6)
    np.testing.assert_allclose(down[:, 1:-1, 1:-1], 1.0, rtol=1e-6)
    # Extra padding on the wrappers is relative to the output (up) / input (down).
    assert U.upsample2d(ones, f, padding=[1, 2, 0, -1]).shape == (1, 15, 19, 2)
    assert U.downsample2d(ones, f, padding=2).shape == (1, 6, 6, 2)
    assert U.upsample2d(ones, f, up=[2, 4]).shape == (1, 32, 16, 2)


def test_wrappers_match_numpy_with_documented_padding():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 5, 7, 2))
    f = rng.normal(size=4)
    fn = U.setup_filter(f, normalize=False).numpy()
    # upsample2d(up=2) == upfirdn2d(up=2, padding=[(4+1)//2, (4-2)//2]*2, gain*4)
    want = np_upfirdn2d(x, np.outer(f, f) * 4, up=2, padding=[2, 1, 2, 1])
    _assert_close(U.upsample2d(x.astype(np.float32), fn).numpy(), want)
    want = np_upfirdn2d(x, np.outer(f, f), down=2, padding=[1, 1, 1, 1])
    _assert_close(U.downsample2d(x.astype(np.float32), fn).numpy(), want)


def test_float16_and_dynamic_batch():
    f = U.setup_filter([1, 3, 3, 1])
    x = tf.random.normal([2, 8, 8, 4])
    y16 = U.upsample2d(tf.cast(x, tf.float16), f)
    assert y16.dtype == tf.float16
    np.testing.assert_allclose(y16.numpy().astype(np.float32), U.upsample2d(x, f).numpy(), atol=2e-2)
    fn = tf.function(lambda t: U.downsample2d(U.upsample2d(t, f), f),
                     input_signature=[tf.TensorSpec([None, 8, 8, 4], tf.float32)])
    assert fn(x).shape == (2, 8, 8, 4)


def test_impl_selection_is_explicit(monkeypatch):
    """xla_function traces use 'slices', everything else 'conv', an explicit impl always wins."""
    seen = []
    for name in ("_fir_conv", "_fir_1d", "_fir_2d", "_fir_ref"):
        real = getattr(U, name)
        monkeypatch.setattr(U, name, lambda *a, _n=name, _r=real, **k: seen.append(_n) or _r(*a, **k))
    x = tf.zeros([1, 8, 8, 2])
    f2 = tf.ones([3, 3]) / 9.0
    run = lambda t: U.upfirdn2d(t, f2)
    U.xla_function(run)(x)
    tf.function(run)(x)
    run(x)
    U.xla_function(lambda t: U.upfirdn2d(t, f2, impl="ref"))(x)
    with U.default_impl("ref"):
        run(x)
    assert seen == ["_fir_2d", "_fir_conv", "_fir_conv", "_fir_ref", "_fir_ref"]
    with pytest.raises(ValueError, match="impl must be one of"):
        U.upfirdn2d(x, f2, impl="fast")


@pytest.mark.parametrize("impl", ["slices", "conv", "ref"])
def test_gradient_matches_finite_differences(impl):
    rng = np.random.default_rng(5)
    for cfg in CONFIGS[:6]:
        x = tf.constant(rng.normal(size=(1,) + cfg["x_shape"][1:3] + (2,)), tf.float64)
        kw = dict(up=cfg["up"], down=cfg["down"], padding=cfg["padding"], flip_filter=cfg["flip_filter"],
                  gain=cfg["gain"], impl=impl)
        f = tf.constant(cfg["f"], tf.float32)
        theo, num = tf.test.compute_gradient(lambda t: U.upfirdn2d(t, f, **kw), [x])
        np.testing.assert_allclose(theo[0], num[0], rtol=1e-6, atol=1e-6)
