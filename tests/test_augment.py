"""ADA augment pipe: identity at p = 0, each op against its definition, sampler vs NumPy, XLA, grads."""
import numpy as np
import pytest
import tensorflow as tf

from histaug_tf.gan import augment as A

N = 64  # batch per statistical test


def _ramp(n, h, w):
    """Two channels holding each pixel's own centred (x, y) coordinate: a warp returns, at every
    output pixel, the source coordinate G_inv @ q, so the transform can be read off the output."""
    yy, xx = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    return np.broadcast_to(np.stack([xx, yy], -1), (n, h, w, 2)).astype(np.float32)


def _fit_affine(y, h, w, r=4):
    """Least-squares [2, 3] affine map (output centred coords -> values) over the central 2r x 2r."""
    rows = slice(h // 2 - r, h // 2 + r)
    cols = slice(w // 2 - r, w // 2 + r)
    qy, qx = np.meshgrid(np.arange(h)[rows] - (h - 1) / 2, np.arange(w)[cols] - (w - 1) / 2, indexing="ij")
    a = np.stack([qx.ravel(), qy.ravel(), np.ones(qx.size)], 1)
    out = []
    for img in y:
        sol, *_ = np.linalg.lstsq(a, img[rows, cols].reshape(-1, 2).astype(np.float64), rcond=None)
        resid = np.abs(a @ sol - img[rows, cols].reshape(-1, 2)).max()
        assert resid < 1e-3, resid  # the warp reproduces linear images exactly (output is affine)
        out.append(sol.T)
    return np.array(out)  # [N, 2, 3]


def _geom(n=N, size=32, **ops):
    pipe = A.AugmentPipe(p=1.0, seed=1, **ops)
    return _fit_affine(pipe(_ramp(n, size, size)).numpy(), size, size)


# ------------------------------------------------------------------ identity and presets
def test_presets_match_reference_table():
    assert set(A.AUGPIPE_SPECS) == {"blit", "geom", "color", "filter", "noise", "cutout", "bg", "bgc", "bgcf",
                                    "bgcfn", "bgcfnc"}
    assert A.AUGPIPE_SPECS["bgc"] == dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                                          brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
    assert A.AUGPIPE_SPECS["bgcfnc"] == dict(A.AUGPIPE_SPECS["bgc"], imgfilter=1, noise=1, cutout=1)
    pipe = A.make_augment_pipe("bgc", p=0.25)
    assert pipe.p.dtype == tf.float32 and not pipe.p.trainable and float(pipe.p) == 0.25
    assert (pipe.xint_max, pipe.scale_std, pipe.rotate_max, pipe.aniso_std, pipe.xfrac_std) == (0.125, 0.2, 1, 0.2, 0.125)
    assert (pipe.brightness_std, pipe.contrast_std, pipe.hue_max, pipe.saturation_std) == (0.2, 0.5, 1, 1)
    assert (pipe.imgfilter_std, pipe.noise_std, pipe.cutout_size) == (1, 0.1, 0.5)
    with pytest.raises(ValueError):
        A.make_augment_pipe("bgcx")


@pytest.mark.parametrize("name", sorted(A.AUGPIPE_SPECS))
def test_p0_is_exact_identity(name):
    x = np.random.default_rng(0).uniform(-1, 1, size=(8, 16, 16, 3)).astype(np.float32)
    pipe = A.make_augment_pipe(name, p=0.0)
    np.testing.assert_array_equal(pipe(x).numpy(), x)


# ------------------------------------------------------------------ sampler and padding
def _np_bilinear(img, x, y):
    """grid_sample(bilinear, zeros, align_corners=False) in pixel coordinates, written out."""
    b, h, w, c = img.shape
    out = np.zeros(x.shape + (c,))
    for n in range(b):
        for i in range(x.shape[1]):
            for j in range(x.shape[2]):
                px, py = x[n, i, j], y[n, i, j]
                x0, y0 = int(np.floor(px)), int(np.floor(py))
                for yy in (y0, y0 + 1):
                    for xx in (x0, x0 + 1):
                        wgt = (1 - abs(px - xx)) * (1 - abs(py - yy))
                        if 0 <= xx < w and 0 <= yy < h:
                            out[n, i, j] += wgt * img[n, yy, xx]
    return out


def test_bilinear_sampler_matches_numpy_eager_and_xla():
    rng = np.random.default_rng(2)
    img = rng.normal(size=(2, 5, 7, 2)).astype(np.float32)
    x = rng.uniform(-2, 8, size=(2, 4, 6)).astype(np.float32)
    y = rng.uniform(-2, 6, size=(2, 4, 6)).astype(np.float32)
    x[0, 0, :3] = [0.0, 3.0, 6.0]  # exact pixel centres
    want = _np_bilinear(img.astype(np.float64), x, y)
    np.testing.assert_allclose(A.bilinear_sample(img, x, y).numpy(), want, rtol=1e-5, atol=1e-5)
    got = tf.function(A.bilinear_sample, jit_compile=True)(img, x, y).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    theo, num = tf.test.compute_gradient(lambda t: A.bilinear_sample(t, x, y), [tf.constant(img, tf.float64)])
    np.testing.assert_allclose(theo[0], num[0], atol=1e-6)


def test_reflect_pad_matches_numpy_including_multiple_folds():
    x = np.random.default_rng(3).normal(size=(2, 4, 5, 1)).astype(np.float32)
    for py, px in [(1, 2), (3, 4), (9, 13)]:
        want = np.pad(x, ((0, 0), (py, py), (px, px), (0, 0)), mode="reflect")
        np.testing.assert_array_equal(A.reflect_pad(x, py, px).numpy(), want)


def test_warp_matrices_equal_reflect_pad_plus_upfirdn2d():
    from histaug_tf.ops import upfirdn2d as U
    pipe = A.make_augment_pipe("bgcf")
    x = np.random.default_rng(4).normal(size=(2, 6, 10, 3)).astype(np.float32)
    up_y, up_x, down_y, down_x = pipe._geom_matrices(6, 10)
    hz = U.setup_filter(A._SYM6)
    want = U.upsample2d(A.reflect_pad(x, 5, 9), hz, up=2).numpy()
    np.testing.assert_allclose(A._apply_rows_cols(x, up_y, up_x).numpy(), want, rtol=1e-5, atol=1e-5)
    z = np.random.default_rng(5).normal(size=(2, 2 * 6 + 12, 2 * 10 + 12, 3)).astype(np.float32)
    want = U.downsample2d(z, hz, down=2, padding=-6, flip_filter=True).numpy()
    np.testing.assert_allclose(A._apply_rows_cols(z, down_y, down_x).numpy(), want, rtol=1e-5, atol=1e-5)
    # imgfilter: the per-image matrices equal reflect padding + 'valid' correlation with the taps.
    sy, sx = pipe._filter_shifts(6, 10)
    taps = sy.shape[0]
    filt = np.random.default_rng(6).normal(size=(2, taps)).astype(np.float32)
    got = A._apply_rows_cols(x, tf.einsum("bk,kij->bij", filt, sy), tf.einsum("bk,kij->bij", filt, sx)).numpy()
    xp = np.pad(x, ((0, 0), (taps // 2,) * 2, (taps // 2,) * 2, (0, 0)), mode="reflect")
    want = np.zeros_like(x)
    for n in range(2):
        for i in range(6):
            for j in range(10):
                win = xp[n, i:i + taps, j:j + taps]
                want[n, i, j] = np.einsum("a,b,abc->c", filt[n], filt[n], win)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _np_reference_warp(img, g_inv):
    """The reference's geometric execution for ONE image [H, W, C], transcribed to NumPy: margin from
    the transformed corners (+ filter room, clamped to size - 1), reflect pad, origin shift, 2x upsample
    with sym6, grid_sample(bilinear, zeros, align_corners=False), 2x downsample with crop."""
    h, w, _ = img.shape
    f = np.asarray(A._SYM6, np.float64)
    f = f / f.sum()
    taps, hz_pad = f.size, f.size // 4
    cx, cy = (w - 1) / 2, (h - 1) / 2
    corners = g_inv @ np.array([[-cx, cx, cx, -cx], [-cy, -cy, cy, cy], [1, 1, 1, 1]], np.float64)
    margin = np.concatenate([-corners[:2], corners[:2]]).max(axis=1)  # x0, y0, x1, y1
    margin = margin + np.array([hz_pad * 2 - cx, hz_pad * 2 - cy] * 2)
    margin = np.minimum(np.maximum(margin, 0), [w - 1, h - 1] * 2)
    mx0, my0, mx1, my1 = np.ceil(margin).astype(int)
    x = np.pad(img.astype(np.float64), ((my0, my1), (mx0, mx1), (0, 0)), mode="reflect")
    tr = lambda tx, ty: np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], np.float64)  # noqa: E731
    sc = lambda sx, sy: np.diag([sx, sy, 1.0])  # noqa: E731
    g = tr((mx0 - mx1) / 2, (my0 - my1) / 2) @ g_inv

    def up_axis(a, axis):  # zero insertion, pad ((taps+1)//2, (taps-2)//2), convolution with 2 f, 'valid'
        a = np.moveaxis(a, axis, 0)
        z = np.zeros((2 * a.shape[0],) + a.shape[1:])
        z[::2] = a
        z = np.concatenate([np.zeros(((taps + 1) // 2,) + a.shape[1:]), z, np.zeros(((taps - 2) // 2,) + a.shape[1:])])
        out = np.apply_along_axis(lambda v: np.convolve(v, 2 * f, mode="valid"), 0, z)
        return np.moveaxis(out, 0, axis)

    x = up_axis(up_axis(x, 0), 1)
    g = sc(2, 2) @ g @ sc(0.5, 0.5)
    g = tr(-0.5, -0.5) @ g @ tr(0.5, 0.5)
    ho, wo = (h + hz_pad * 2) * 2, (w + hz_pad * 2) * 2
    hi, wi = x.shape[:2]
    qy, qx = np.meshgrid(np.arange(ho) - (ho - 1) / 2, np.arange(wo) - (wo - 1) / 2, indexing="ij")
    src = np.einsum("ij,jhw->ihw", g, np.stack([qx, qy, np.ones_like(qx)]))
    x = _np_bilinear(x[None], src[0][None] + (wi - 1) / 2, src[1][None] + (hi - 1) / 2)[0]

    def down_axis(a, axis):  # crop 1 (= (taps-1)//2 - 2 hz_pad) each side, correlate with f, keep even
        a = np.moveaxis(a, axis, 0)[1:-1]
        out = np.apply_along_axis(lambda v: np.correlate(v, f, mode="valid"), 0, a)[::2]
        return np.moveaxis(out, 0, axis)

    return down_axis(down_axis(x, 0), 1)


def test_warp_matches_numpy_transcription_of_reference():
    rng = np.random.default_rng(21)
    h, w = 12, 10
    pipe = A.make_augment_pipe("bg")
    img = rng.uniform(-1, 1, size=(h, w, 3)).astype(np.float32)
    mats = []
    for theta, s, ax, tx, ty, flip in [(0.3, 1.1, 1.0, 0.7, -1.2, 1), (2.0, 0.8, 1.2, -2.0, 0.5, -1),
                                       (-0.2, 1.0, 0.9, 0.0, 3.0, 1), (np.pi / 2, 1.0, 1.0, 1.0, 0.0, 1)]:
        rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
        mats.append(np.diag([flip / s / ax, 1 / s * ax, 1.0]) @ rot @ np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]]))
    got = pipe._warp(tf.constant(np.stack([img] * len(mats))), tf.constant(np.stack(mats), tf.float32), h, w).numpy()
    for k, m in enumerate(mats):
        want = _np_reference_warp(img, m)
        # The reference pads only by the margin this transform needs, we always by size - 1; that
        # changes nothing here: the reference's margin already covers every sample and filter tap.
        np.testing.assert_allclose(got[k], want, atol=2e-4)


# ------------------------------------------------------------------ geometric ops, one at a time
def test_xflip_rate_and_form():
    g = _geom(xflip=1)
    flipped = g[:, 0, 0] < 0
    np.testing.assert_allclose(g[:, 0, 0], np.where(flipped, -1, 1), atol=1e-4)
    np.testing.assert_allclose(g[:, :, 1], np.tile([0, 1], (N, 1)), atol=1e-4)  # y untouched
    assert 0.3 < flipped.mean() < 0.7  # Binomial(64, 0.5): 0.5 +- 3.2 sigma


def test_rotate90_uniform_over_four():
    g = _geom(rotate90=1)
    k = np.round(np.arctan2(g[:, 1, 0], g[:, 0, 0]) / (np.pi / 2)).astype(int) % 4
    for kk in range(4):
        rot = np.array([[np.cos(kk * np.pi / 2), -np.sin(kk * np.pi / 2)], [np.sin(kk * np.pi / 2), np.cos(kk * np.pi / 2)]])
        np.testing.assert_allclose(g[k == kk, :, :2], np.broadcast_to(rot, ((k == kk).sum(), 2, 2)), atol=1e-4)
    counts = np.bincount(k, minlength=4)
    assert counts.min() >= 6 and counts.max() <= 28, counts  # each ~16 (Binomial(64, 1/4) sd 3.5)


def test_integer_translation():
    g = _geom(xint=1)
    np.testing.assert_allclose(g[:, :, :2], np.broadcast_to(np.eye(2), (N, 2, 2)), atol=1e-4)
    t = -g[:, :, 2]  # output = input shifted by round(t * size), t ~ U(-0.125, 0.125)
    np.testing.assert_allclose(t, np.round(t), atol=1e-3)
    t = np.round(t).astype(int)
    assert np.abs(t).max() <= 4 and len(np.unique(t)) >= 5  # 32 * 0.125 = 4
    assert abs(t.mean()) < 1.0


def test_rotation_angles():
    g = _geom(rotate=1)
    lin = g[:, :, :2]
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", lin, lin), np.broadcast_to(np.eye(2), (N, 2, 2)), atol=1e-3)
    np.testing.assert_allclose(np.linalg.det(lin), 1, atol=1e-3)
    theta = np.arctan2(lin[:, 1, 0], lin[:, 0, 0])
    # At p = 1 pre- and post-rotations (each U(-pi, pi)) always apply: the sum is uniform on the circle.
    assert abs(np.mean(np.cos(theta))) < 0.35 and abs(np.mean(np.sin(theta))) < 0.35
    assert 0.3 < np.mean(np.abs(theta) < np.pi / 2) < 0.7


def test_rotation_probability_at_half_strength():
    pipe = A.AugmentPipe(rotate=1, p=0.5, seed=4)
    g = _fit_affine(pipe(_ramp(N, 32, 32)).numpy(), 32, 32)
    rotated = np.abs(g[:, 1, 0]) > 1e-4
    assert 0.3 < rotated.mean() < 0.7  # P(pre or post) = rotate * p = 0.5


def test_isotropic_and_anisotropic_scaling():
    g = _geom(scale=1)
    np.testing.assert_allclose(g[:, 0, 0], g[:, 1, 1], rtol=1e-4)
    log_s = -np.log2(g[:, 0, 0])  # G_inv = diag(1/s, 1/s), log2 s ~ N(0, 0.2^2)
    assert 0.14 < log_s.std() < 0.26 and abs(log_s.mean()) < 0.08
    g = _geom(aniso=1)
    np.testing.assert_allclose(g[:, 0, 0] * g[:, 1, 1], 1, rtol=1e-4)  # diag(1/s, s)
    log_s = -np.log2(g[:, 0, 0])
    assert 0.14 < log_s.std() < 0.26 and abs(log_s.mean()) < 0.08


def test_fractional_translation():
    size = 64  # shifts have sd 0.125 * 64 = 8 px; keep the fit region clear of the reflected border
    pipe = A.AugmentPipe(xfrac=1, p=1.0, seed=5)
    g = _fit_affine(pipe(_ramp(N, size, size)).numpy(), size, size, r=1)
    np.testing.assert_allclose(g[:, :, :2], np.broadcast_to(np.eye(2), (N, 2, 2)), atol=1e-3)
    t = -g[:, :, 2].ravel() / size  # t ~ N(0, 0.125^2) per axis
    assert 0.1 < t.std() < 0.15 and abs(t.mean()) < 0.04


# ------------------------------------------------------------------ color ops, one at a time
def _fit_color(x, y):
    """Per image least-squares y = M @ rgb + t; returns [N, 3, 4]."""
    out = []
    for xi, yi in zip(x, y):
        a = np.concatenate([xi.reshape(-1, 3), np.ones((xi[..., 0].size, 1))], 1).astype(np.float64)
        sol, *_ = np.linalg.lstsq(a, yi.reshape(-1, 3).astype(np.float64), rcond=None)
        assert np.abs(a @ sol - yi.reshape(-1, 3)).max() < 1e-4
        out.append(sol.T)
    return np.array(out)


def _color(**ops):
    x = np.random.default_rng(6).uniform(-1, 1, size=(N, 8, 8, 3)).astype(np.float32)
    return x, A.AugmentPipe(p=1.0, seed=7, **ops)(x).numpy()


V = np.ones(3) / np.sqrt(3)


def test_brightness_and_contrast_distributions():
    x, y = _color(brightness=1)
    c = _fit_color(x, y)
    np.testing.assert_allclose(c[:, :, :3], np.broadcast_to(np.eye(3), (N, 3, 3)), atol=1e-4)
    b = c[:, 0, 3]
    np.testing.assert_allclose(c[:, :, 3], np.repeat(b[:, None], 3, 1), atol=1e-4)
    assert 0.14 < b.std() < 0.26 and abs(b.mean()) < 0.08  # N(0, 0.2^2)
    x, y = _color(contrast=1)
    c = _fit_color(x, y)
    s = c[:, 0, 0]
    np.testing.assert_allclose(c[:, :, :3], s[:, None, None] * np.eye(3), atol=1e-4)
    assert 0.35 < np.log2(s).std() < 0.65 and abs(np.log2(s).mean()) < 0.2  # log2 c ~ N(0, 0.5^2)


def test_lumaflip_is_householder_reflection_half_the_time():
    x, y = _color(lumaflip=1)
    m = _fit_color(x, y)[:, :, :3]
    flip = np.eye(3) - 2 * np.outer(V, V)
    is_flip = np.abs(m - flip).max(axis=(1, 2)) < 1e-4
    is_id = np.abs(m - np.eye(3)).max(axis=(1, 2)) < 1e-4
    assert np.all(is_flip | is_id) and 0.3 < is_flip.mean() < 0.7


def test_hue_rotation_preserves_luma_and_angles_uniform():
    x, y = _color(hue=1)
    np.testing.assert_allclose(y.mean(axis=-1), x.mean(axis=-1), atol=1e-5)  # luma axis (1,1,1)/sqrt3 fixed
    m = _fit_color(x, y)[:, :, :3]
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", m, m), np.broadcast_to(np.eye(3), (N, 3, 3)), atol=1e-4)
    np.testing.assert_allclose(m @ V, np.broadcast_to(V, (N, 3)), atol=1e-4)
    cos = (np.trace(m, axis1=1, axis2=2) - 1) / 2  # rotation angle |theta| ~ U(0, pi)
    ang = np.arccos(np.clip(cos, -1, 1))
    assert abs(ang.mean() - np.pi / 2) < 0.35 and 0.3 < np.mean(ang < np.pi / 2) < 0.7


def test_saturation_scales_chroma_keeps_luma():
    x, y = _color(saturation=1)
    np.testing.assert_allclose(y.mean(axis=-1), x.mean(axis=-1), atol=1e-5)
    m = _fit_color(x, y)[:, :, :3]
    u = np.array([1, -1, 0]) / np.sqrt(2)  # a direction orthogonal to the luma axis
    s = (m @ u) @ u
    np.testing.assert_allclose(m, np.outer(V, V) + s[:, None, None] * (np.eye(3) - np.outer(V, V)), atol=1e-4)
    assert 0.7 < np.log2(s).std() < 1.3 and abs(np.log2(s).mean()) < 0.4  # log2 s ~ N(0, 1)


# ------------------------------------------------------------------ filter, noise, cutout
def test_imgfilter_bank_and_dc_gain():
    bank = A._build_filter_bank()
    delta = np.zeros(bank.shape[1])
    delta[bank.shape[1] // 2] = 1
    np.testing.assert_allclose(bank.sum(axis=0), delta, atol=1e-6)  # unit gains -> identity
    np.testing.assert_allclose(bank.sum(axis=1), [1, 0, 0, 0], atol=1e-6)  # only band 0 passes DC
    np.testing.assert_allclose(bank, bank[:, ::-1], atol=1e-7)  # zero phase
    x = np.full((N, 16, 16, 3), 0.5, np.float32)
    y = A.AugmentPipe(imgfilter=1, p=1.0, seed=8)(x).numpy()
    per_image = y.reshape(N, -1)
    np.testing.assert_allclose(per_image, per_image[:, :1] * np.ones_like(per_image), rtol=1e-4)  # stays flat
    assert np.std(np.log2(per_image[:, 0] / 0.5)) > 0.1  # the DC band gain varies between images


def test_imgfilter_band_gain_and_power_normalisation():
    """Only the top band enabled: a Nyquist checkerboard is scaled by g3^2 and DC by g0^2 (the 1-D
    filter runs along both axes), with g = (1, 1, 1, t) / sqrt((10 + 1 + 1 + t^2) / 13), log2 t ~ N(0, 1)."""
    yy, xx = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    checker = (-1.0) ** (xx + yy)
    x = np.broadcast_to((0.5 + 0.25 * checker)[None, :, :, None], (N, 16, 16, 3)).astype(np.float32)
    y = A.AugmentPipe(imgfilter=1, imgfilter_bands=[0, 0, 0, 1], p=1.0, seed=14)(x).numpy()
    a = y.mean(axis=(1, 2, 3)) / 0.5  # g0^2
    b = (y * checker[None, :, :, None]).mean(axis=(1, 2, 3)) / 0.25  # g3^2
    np.testing.assert_allclose(y, (0.5 * a[:, None, None, None] + 0.25 * b[:, None, None, None] * checker[None, :, :, None])
                               * np.ones_like(y), atol=1e-4)
    t2 = b / a  # t^2
    np.testing.assert_allclose(a, 13 / (12 + t2), rtol=1e-4)
    log_t = 0.5 * np.log2(t2)
    assert 0.7 < log_t.std() < 1.3 and abs(log_t.mean()) < 0.4


def test_noise_std():
    x = np.zeros((N, 16, 16, 3), np.float32)
    pipe = A.AugmentPipe(noise=1, p=1.0, seed=9)
    y = np.concatenate([pipe(x).numpy() for _ in range(4)])
    sigma = y.reshape(len(y), -1).std(axis=1)  # sigma = |N(0, 1)| * 0.1 per image (256 images)
    assert abs(sigma.mean() - 0.1 * np.sqrt(2 / np.pi)) < 0.015
    assert abs(np.mean(sigma ** 2) - 0.01) < 0.004


def test_cutout_area_and_shape():
    x = np.ones((N, 16, 16, 3), np.float32)
    y = A.AugmentPipe(cutout=1, p=1.0, seed=10)(x).numpy()[..., 0]
    frac = (y == 0).mean(axis=(1, 2))
    # A 0.5 x 0.5 box at a uniform centre, clipped by the image: E[area] = (0.5 - 1/16)^2 = 0.1914
    assert abs(frac.mean() - 0.4375 ** 2) < 0.04
    for img in y:
        rows, cols = np.where((img == 0).any(axis=1))[0], np.where((img == 0).any(axis=0))[0]
        if rows.size:
            assert rows.size <= 8 and cols.size <= 8
            assert np.all(img[rows.min():rows.max() + 1, cols.min():cols.max() + 1] == 0)  # a rectangle
            assert (img == 0).sum() == rows.size * cols.size


# ------------------------------------------------------------------ XLA and gradients
def _tiny_d(x, w):
    from histaug_tf.ops.bias_act import bias_act
    from histaug_tf.ops.upfirdn2d import downsample2d, setup_filter
    h = downsample2d(x, setup_filter([1, 3, 3, 1]))
    h = bias_act(tf.nn.conv2d(h, w, 1, "SAME"), act="softplus")
    return tf.reduce_sum(h, axis=[1, 2, 3])


def test_full_pipe_under_xla_identity_gradients_and_r1():
    """One compiled step (bgcfnc, seeded generator): augmented images, d/dx, and d R1 / d w."""
    x = tf.constant(np.random.default_rng(11).uniform(-1, 1, size=(4, 16, 16, 3)), tf.float32)
    w = tf.constant(np.random.default_rng(12).normal(size=(3, 3, 3, 2)) * 0.3, tf.float32)
    pipe = A.make_augment_pipe("bgcfnc", p=0.0, seed=13)

    @tf.function(jit_compile=True)
    def step(x, w):
        with tf.GradientTape() as outer:
            outer.watch(w)
            with tf.GradientTape() as inner:
                inner.watch(x)
                aug = pipe(x)
                logits = tf.reduce_sum(_tiny_d(aug, w))
            gx = inner.gradient(logits, x)
            r1 = tf.reduce_sum(tf.square(gx))
        return aug, gx, outer.gradient(r1, w)

    aug, _, _ = step(x, w)
    np.testing.assert_array_equal(aug.numpy(), x.numpy())  # p = 0: exact identity, compiled
    pipe.p.assign(1.0)  # the same compiled step reads the variable
    aug, gx, gw = step(x, w)
    assert np.mean(np.abs(aug.numpy() - x.numpy()).reshape(4, -1).max(axis=1) > 1e-3) > 0.7
    assert np.all(np.isfinite(gx.numpy())) and np.abs(gx.numpy()).max() > 0
    assert np.all(np.isfinite(gw.numpy())) and np.abs(gw.numpy()).max() > 0


def test_global_rng_xla_float16_and_grayscale():
    pipe = A.make_augment_pipe("color", p=1.0)  # no seed: TF's global RNG (stateful ops, XLA kernels)
    x = tf.random.uniform([4, 16, 16, 3], -1, 1, dtype=tf.float32)
    y = tf.function(pipe.__call__, jit_compile=True)(x)
    assert y.shape == x.shape and np.abs(y.numpy() - x.numpy()).max() > 1e-3
    y16 = A.make_augment_pipe("bgc", p=1.0)(tf.cast(x, tf.float16))
    assert y16.dtype == tf.float16 and y16.shape == (4, 16, 16, 3) and np.all(np.isfinite(y16.numpy()))
    gray = A.make_augment_pipe("bgc", p=1.0, seed=1)(tf.random.uniform([4, 16, 16, 1]))
    assert gray.shape == (4, 16, 16, 1) and np.all(np.isfinite(gray.numpy()))


@pytest.mark.parametrize("channels", [1, 3])
def test_one_uniform_and_one_normal_draw_per_call_each_parameter_its_own_column(channels):
    """Inside an XLA program each random draw is compiled on its own, so a call draws all its
    per-image parameters at once: one uniform and one normal draw (and the noise op's per-pixel
    normal), each parameter its own column. Counted in the traced graph of every preset."""
    random_ops = {"StatelessRandomUniformV2", "StatelessRandomNormalV2",  # a seeded Generator
                  "RandomUniform", "RandomStandardNormal"}  # TF's global RNG
    for name, seed in [(name, seed) for name in A.AUGPIPE_SPECS for seed in (3, None)]:
        pipe = A.make_augment_pipe(name, p=1.0, seed=seed)
        graph = tf.function(pipe.__call__).get_concrete_function(
            tf.TensorSpec([4, 8, 8, channels], tf.float32)).graph
        draws = [op for op in graph.get_operations() if op.type in random_ops]
        uniform, normal = pipe._draw_counts(channels)
        expected = (uniform > 0) + (normal > 0) + (pipe.noise > 0)
        assert len(draws) == expected, (name, channels, [op.type for op in draws])
    # Each parameter its own column: with a shared one, xflip's "flip?" (u < 0.5 at p = 0.5) and
    # its gate (u < 0.5) would never both allow a flip; drawn apart, a quarter of the images flip.
    y = A.AugmentPipe(xflip=1, p=0.5, seed=5)(_ramp(400, 8, 8)).numpy()
    flipped = np.mean(y[:, 0, 0, 0] > 0)
    assert 0.18 < flipped < 0.32, flipped
