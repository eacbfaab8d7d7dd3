"""ADA augmentation pipeline (Karras et al. 2020, "Training GANs with Limited Data"), NHWC, in TF.

The set of operations, their default strengths, the probability multipliers, the order, and how
they compose follow ``training/augment.py`` of NVlabs/stylegan2-ada-pytorch:

* blit: ``xflip``, ``rotate90``, ``xint`` (integer translation, range ``xint_max`` = 0.125);
* geom: ``scale`` (log2 std 0.2), ``rotate`` (max 1 = full circle, applied before and after the
  anisotropic scaling, each with probability ``1 - sqrt(1 - rotate * p)``), ``aniso`` (log2 std
  0.2), ``xfrac`` (std 0.125 of the image size);
* color: ``brightness`` (std 0.2), ``contrast`` (log2 std 0.5), ``lumaflip``, ``hue`` (max 1),
  ``saturation`` (log2 std 1), as one 4x4 homogeneous color matrix around the luma axis
  ``(1, 1, 1) / sqrt(3)``;
* ``imgfilter`` (4 frequency bands from the sym2 wavelet, log2 std 1), ``noise`` (std 0.1),
  ``cutout`` (size 0.5).

Each op is applied to each image with probability ``multiplier * p`` (``p`` is a non-trainable
scalar ``tf.Variable``). All geometric ops compose into one inverse 3x3 matrix per image, executed
by a single resampling: reflect-pad -> 2x upsample with the sym6 wavelet filter -> bilinear sampling
-> 2x downsample. Differences from the reference, needed for XLA (static shapes):

* The reference pads by a margin computed from the batch's transforms, clamped to ``size - 1``.
  We always pad by that worst case (``size - 1``, reflection) so shapes are static. The sampled
  region is the same; only pixels the reference would have taken from its (zero) outside differ.
* Sampling is our own gather-based bilinear sampler (``bilinear_sample``), equivalent to
  ``grid_sample(mode='bilinear', padding_mode='zeros', align_corners=False)``; TF's
  ``ImageProjectiveTransformV3`` has no XLA kernel.
* Images for which no geometric (or no color) op was drawn pass that stage unchanged (bit-exact), so
  ``p = 0`` is exactly the identity; the resampling is skipped when no image of the batch needs it.
* Reflection padding folds repeatedly, so filters wider than the image (imgfilter on 16x16) work.

The pipe is differentiable w.r.t. the images (including second order, for R1 through the pipe) and
compiles with ``tf.function(jit_compile=True)``.
"""
from __future__ import annotations


import numpy as np
import scipy.signal
import tensorflow as tf

from histaug_tf.ops import upfirdn2d

__all__ = ["AugmentPipe", "AUGPIPE_SPECS", "make_augment_pipe", "bilinear_sample"]

# Low-pass decomposition filters of the wavelets used (PyWavelets' dec_lo coefficients, as listed in
# the reference).
_SYM2 = [-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025]
_SYM6 = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
         0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
         -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148]

# The reference's augpipe presets (train.py, --augpipe).
_BLIT = dict(xflip=1, rotate90=1, xint=1)
_GEOM = dict(scale=1, rotate=1, aniso=1, xfrac=1)
_COLOR = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
AUGPIPE_SPECS = {
    "blit": dict(_BLIT),
    "geom": dict(_GEOM),
    "color": dict(_COLOR),
    "filter": dict(imgfilter=1),
    "noise": dict(noise=1),
    "cutout": dict(cutout=1),
    "bg": dict(_BLIT, **_GEOM),
    "bgc": dict(_BLIT, **_GEOM, **_COLOR),
    "bgcf": dict(_BLIT, **_GEOM, **_COLOR, imgfilter=1),
    "bgcfn": dict(_BLIT, **_GEOM, **_COLOR, imgfilter=1, noise=1),
    "bgcfnc": dict(_BLIT, **_GEOM, **_COLOR, imgfilter=1, noise=1, cutout=1),
}


# ------------------------------------------------------------------ matrices (batched, [B, n, n])
def _matrix(rows):
    """Stack a nested list of scalars / [B] tensors into [B, n, m] (at least one entry is a tensor)."""
    ref = next(e for row in rows for e in row if isinstance(e, tf.Tensor))
    shape = tf.shape(ref)
    fills = {}  # one [B] tensor per distinct constant entry (fewer graph nodes than one each)

    def fill(e):
        if e not in fills:
            fills[e] = tf.fill(shape, tf.constant(e, ref.dtype))
        return fills[e]

    elems = [e if isinstance(e, tf.Tensor) else fill(e) for row in rows for e in row]
    out = tf.stack(elems, axis=-1)
    return tf.reshape(out, tf.concat([shape, [len(rows), len(rows[0])]], 0))


def _translate2d(tx, ty):
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]])


def _scale2d(sx, sy):
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])


def _rotate2d(theta):
    c, s = tf.cos(theta), tf.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _translate3d(tx, ty, tz):
    return _matrix([[1, 0, 0, tx], [0, 1, 0, ty], [0, 0, 1, tz], [0, 0, 0, 1]])


def _scale3d(sx, sy, sz):
    return _matrix([[sx, 0, 0, 0], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1]])


def _rotate3d(v, theta):
    """Rotation by ``theta`` about the unit axis ``v`` (3 Python floats), Rodrigues' formula."""
    vx, vy, vz = v
    s, c = tf.sin(theta), tf.cos(theta)
    cc = 1 - c
    return _matrix([[vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
                    [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
                    [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
                    [0, 0, 0, 1]])


def _const_matrix(m):
    return tf.constant(np.asarray(m, np.float32))


# ------------------------------------------------------------------ sampling helpers
def reflect_pad(images, pad_y, pad_x):
    """Reflection-pad NHWC ``images`` by ``pad_y`` rows and ``pad_x`` columns on both sides.

    Reflection does not repeat the edge pixel (``np.pad(mode='reflect')``); pads wider than the image
    fold repeatedly (steps of ``size - 1``, each a ``MirrorPad``, which XLA compiles and which has
    gradients of any order).
    """
    h, w = int(images.shape[1]), int(images.shape[2])
    for axis, n, pad in ((2, w, pad_x), (1, h, pad_y)):
        if pad <= 0:
            continue
        if n == 1:
            images = tf.repeat(images, 2 * pad + 1, axis=axis)
            continue
        while pad > 0:
            step = min(pad, n - 1)
            paddings = [[0, 0]] * 4
            paddings[axis] = [step, step]
            images = tf.pad(images, paddings, mode="REFLECT")
            pad -= step
    return images


def bilinear_sample(images, x, y):
    """Bilinear sampling of NHWC ``images`` at pixel coordinates ``x``, ``y`` ([B, Ho, Wo]).

    Pixel ``(i, j)`` has its centre at ``x = j, y = i``; samples outside use zeros. This equals
    ``torch.nn.functional.grid_sample(mode='bilinear', padding_mode='zeros', align_corners=False)``
    with ``x = ((gx + 1) * W - 1) / 2``. Gather-based: XLA-compilable, differentiable w.r.t.
    ``images`` (any order); the coordinates are treated as constants.

    Returns: [B, Ho, Wo, C].
    """
    x = tf.stop_gradient(tf.cast(x, tf.float32))
    y = tf.stop_gradient(tf.cast(y, tf.float32))
    h, w, c = int(images.shape[1]), int(images.shape[2]), int(images.shape[3])
    b = tf.shape(images)[0]
    flat = tf.reshape(images, [-1, c])
    base = tf.reshape(tf.range(b) * (h * w), [-1, 1, 1])
    x0 = tf.floor(x)
    y0 = tf.floor(y)
    wx1 = x - x0
    wy1 = y - y0
    x0 = tf.cast(x0, tf.int32)
    y0 = tf.cast(y0, tf.int32)
    out = None
    for dy, wy in ((0, 1 - wy1), (1, wy1)):
        for dx, wx in ((0, 1 - wx1), (1, wx1)):
            xi = x0 + dx
            yi = y0 + dy
            valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            idx = base + tf.clip_by_value(yi, 0, h - 1) * w + tf.clip_by_value(xi, 0, w - 1)
            weight = tf.where(valid, wx * wy, 0.0)
            term = tf.gather(flat, idx) * tf.cast(weight, images.dtype)[..., None]
            out = term if out is None else out + term
    return out


def _reflect_matrix(n, pad):
    """[n + 2 pad, n] 0/1 matrix: reflection padding (folding repeatedly) as a linear map."""
    idx = np.arange(-pad, n + pad)
    if n > 1:
        period = 2 * (n - 1)
        idx = np.mod(idx, period)
        idx = np.where(idx > n - 1, period - idx, idx)
    else:
        idx = np.zeros_like(idx)
    m = np.zeros([idx.size, n], np.float64)
    m[np.arange(idx.size), idx] = 1
    return m


def _upsample_matrix(n, f):
    """[2n, n] matrix of 1-D ``upsample2d(x, f, up=2)`` (one axis; f normalised, gain 2 per axis).

    upsample2d pads (taps+1)//2 before, zero-inserts and convolves: out[o] = sum_i g[o + p0 - 1 - 2i + ...];
    written out: out[o] = sum_i 2 f[o + (taps - 1) - p0 - 2 i] x[i], p0 = (taps + 1) // 2.
    """
    taps = len(f)
    p0 = (taps + 1) // 2
    m = np.zeros([2 * n, n], np.float64)
    for o in range(2 * n):
        for i in range(n):
            j = o + taps - 1 - p0 - 2 * i
            if 0 <= j < taps:
                m[o, i] = 2 * f[j]
    return m


def _downsample_matrix(n_out, f, crop):
    """[n_out, 2 n_out + 2 crop] matrix of 1-D ``downsample2d(x, f, down=2, padding=-crop,
    flip_filter=True)`` (correlation, f normalised): out[k] = sum_j f[j] x[2k + j + p0], with
    p0 = (taps - 1) // 2 - crop the (negative = crop) padding before."""
    taps = len(f)
    p0 = (taps - 2 + 1) // 2 - crop
    n_in = 2 * n_out + 2 * crop
    m = np.zeros([n_out, n_in], np.float64)
    for k in range(n_out):
        for j in range(taps):
            src = 2 * k + j - p0
            if 0 <= src < n_in:
                m[k, src] += f[j]
    return m


def _apply_rows_cols(x, my, mx):
    """``my @ x @ mx^T`` on the H and W axes of NHWC ``x`` (my: [H', H] or [B, H', H], same for mx)."""
    x = tf.einsum("bhwc,vw->bhvc", x, mx) if mx.shape.rank == 2 else tf.einsum("bhwc,bvw->bhvc", x, mx)
    x = tf.einsum("bhwc,uh->buwc", x, my) if my.shape.rank == 2 else tf.einsum("bhwc,buh->buwc", x, my)
    return x


def _build_filter_bank():
    """The imgfilter bank: 4 bands (DC..highest octave) built from the sym2 wavelet.

    Row 0 is the low-pass of three octaves, rows 1-3 the band-passes; rows sum to a unit impulse.
    """
    lo = np.asarray(_SYM2)
    hi = lo * (-1.0) ** np.arange(lo.size)
    lo2 = np.convolve(lo, lo[::-1]) / 2  # H(z) H(1/z) / 2
    hi2 = np.convolve(hi, hi[::-1]) / 2  # H(-z) H(-1/z) / 2
    bank = np.zeros([4, 1])
    bank[0, 0] = 1.0
    for i in range(1, 4):
        # Insert zeros between taps (an octave down), then low-pass, then add this band's high-pass.
        up = np.zeros([4, 2 * bank.shape[1] - 1])
        up[:, ::2] = bank
        bank = scipy.signal.convolve(up, lo2[np.newaxis, :])
        start = (bank.shape[1] - hi2.size) // 2
        bank[i, start:start + hi2.size] += hi2
    return bank.astype(np.float32)


# ------------------------------------------------------------------ the pipe
class _MatrixCaches:
    """Not a dict, so tf.Module attribute tracking leaves it alone."""

    def __init__(self):
        self.geom = {}
        self.filter = {}


class _Draws:
    """One pipe call's random numbers, handed out column by column: ``u(k)`` / ``n(k)`` give the
    next ``k`` columns ([B] for k = 1, else [B, k]) of the uniform / normal draw."""

    def __init__(self, uniform, normal):
        self._src = {"u": uniform, "n": normal}
        self._next = {"u": 0, "n": 0}

    def _take(self, kind, k):
        src, i = self._src[kind], self._next[kind]
        if src is None or i + k > src.shape[1]:
            raise AssertionError(f"AugmentPipe._draw_counts is short of {kind!r} columns")
        self._next[kind] = i + k
        return src[:, i] if k == 1 else src[:, i:i + k]

    def u(self, k=1):
        return self._take("u", k)

    def n(self, k=1):
        return self._take("n", k)

    def check_all_taken(self):
        for kind, src in self._src.items():
            n = 0 if src is None else src.shape[1]
            if self._next[kind] != n:
                raise AssertionError(f"AugmentPipe._draw_counts: {n} {kind!r} columns drawn, "
                                     f"{self._next[kind]} taken")


class AugmentPipe(tf.Module):
    """Differentiable ADA augmentation of NHWC float images (any range; [-1, 1] in the GAN).

    Every op is off by default; enable it with its probability multiplier (1 in the presets).
    ``p`` (a non-trainable float32 ``tf.Variable``) scales all probabilities; set it with
    ``pipe.p.assign(...)`` or let ADA adapt it (``histaug_tf.gan.ada.Ada``).

    Args (all as in the reference; strengths are defaults of the paper):
        xflip, rotate90, xint, xint_max; scale, rotate, aniso, xfrac, scale_std, rotate_max,
        aniso_std, xfrac_std; brightness, contrast, lumaflip, hue, saturation, brightness_std,
        contrast_std, hue_max, saturation_std; imgfilter, imgfilter_bands, imgfilter_std;
        noise, cutout, noise_std, cutout_size.
        p: initial value of ``p``.
        seed: None draws from TF's global RNG (``tf.random.*``); an int uses a
            ``tf.random.Generator`` created here (create the pipe inside ``strategy.scope()`` when
            distributing) so runs are reproducible.
    """

    def __init__(self, xflip=0, rotate90=0, xint=0, xint_max=0.125,
                 scale=0, rotate=0, aniso=0, xfrac=0, scale_std=0.2, rotate_max=1, aniso_std=0.2,
                 xfrac_std=0.125,
                 brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0, brightness_std=0.2,
                 contrast_std=0.5, hue_max=1, saturation_std=1,
                 imgfilter=0, imgfilter_bands=(1, 1, 1, 1), imgfilter_std=1,
                 noise=0, cutout=0, noise_std=0.1, cutout_size=0.5,
                 p=0.0, seed=None, name="augment_pipe"):
        super().__init__(name=name)
        self.p = tf.Variable(float(p), trainable=False, dtype=tf.float32, name="p",
                             aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.xflip, self.rotate90, self.xint, self.xint_max = float(xflip), float(rotate90), float(xint), float(xint_max)
        self.scale, self.rotate, self.aniso, self.xfrac = float(scale), float(rotate), float(aniso), float(xfrac)
        self.scale_std, self.rotate_max = float(scale_std), float(rotate_max)
        self.aniso_std, self.xfrac_std = float(aniso_std), float(xfrac_std)
        self.brightness, self.contrast, self.lumaflip = float(brightness), float(contrast), float(lumaflip)
        self.hue, self.saturation = float(hue), float(saturation)
        self.brightness_std, self.contrast_std = float(brightness_std), float(contrast_std)
        self.hue_max, self.saturation_std = float(hue_max), float(saturation_std)
        self.imgfilter, self.imgfilter_bands = float(imgfilter), [float(b) for b in imgfilter_bands]
        self.imgfilter_std = float(imgfilter_std)
        self.noise, self.cutout = float(noise), float(cutout)
        self.noise_std, self.cutout_size = float(noise_std), float(cutout_size)
        self._hz_geom = np.asarray(upfirdn2d.setup_filter(_SYM6))  # normalised, separable (12 taps)
        self._hz_fbank = _build_filter_bank()
        assert len(self.imgfilter_bands) == self._hz_fbank.shape[0]
        self._gen = tf.random.Generator.from_seed(int(seed)) if seed is not None else None
        # NumPy matrices per image size, in a plain (non-trackable) holder: a dict attribute of a
        # tf.Module is wrapped for checkpointing, and its tuple keys make tf.train.Checkpoint fail.
        self._caches = _MatrixCaches()

    # ---------------------------------------------------------------- random numbers
    @property
    def rng(self):
        """The pipe's ``tf.random.Generator`` (``seed`` given), or None (global RNG). Checkpoint it
        with the model to resume the same augmentation stream."""
        return self._gen

    def _uniform(self, shape):
        if self._gen is not None:
            return self._gen.uniform(shape, dtype=tf.float32)
        return tf.random.uniform(shape, dtype=tf.float32)

    def _normal(self, shape):
        if self._gen is not None:
            return self._gen.normal(shape, dtype=tf.float32)
        return tf.random.normal(shape, dtype=tf.float32)

    def _draw_counts(self, c):
        """(uniform, normal) random numbers per image that one call needs for channels ``c``: the
        one count of what ``_geometric``, ``_color``, ``_imgfilter``, noise and cutout take."""
        rgb = c > 1
        uniform = (2 * (self.xflip > 0) + 2 * (self.rotate90 > 0) + 3 * (self.xint > 0)
                   + (self.scale > 0) + 4 * (self.rotate > 0) + (self.aniso > 0) + (self.xfrac > 0)
                   + (self.brightness > 0) + (self.contrast > 0) + 2 * (self.lumaflip > 0)
                   + 2 * (self.hue > 0 and rgb) + (self.saturation > 0 and rgb)
                   + len(self.imgfilter_bands) * (self.imgfilter > 0)
                   + (self.noise > 0) + 3 * (self.cutout > 0))
        normal = ((self.scale > 0) + (self.aniso > 0) + 2 * (self.xfrac > 0)
                  + (self.brightness > 0) + (self.contrast > 0) + (self.saturation > 0 and rgb)
                  + len(self.imgfilter_bands) * (self.imgfilter > 0) + (self.noise > 0))
        return int(uniform), int(normal)

    def _draws(self, b, c):
        """All per-image random numbers of one call in two draws ([B, n] uniform and normal)
        rather than one draw per parameter: inside an XLA program every draw is a random-number
        expansion compiled on its own (``benchmarks/bench_lowering.py --rng_costs``)."""
        nu, nn = self._draw_counts(c)
        return _Draws(self._uniform([b, nu]) if nu else None, self._normal([b, nn]) if nn else None)

    # ---------------------------------------------------------------- the pipe
    def __call__(self, images):
        """Augment ``images`` [B, H, W, C] (C = 1 or 3 for color ops); returns the same shape/dtype."""
        images = tf.convert_to_tensor(images)
        in_dtype = images.dtype
        x = tf.cast(images, tf.float32)
        assert x.shape.rank == 4 and x.shape[1] is not None and x.shape[2] is not None and x.shape[3] is not None, \
            f"AugmentPipe needs NHWC images with static H, W, C; got {x.shape}"
        b = tf.shape(x)[0]
        h, w, c = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
        p = tf.cast(tf.convert_to_tensor(self.p), tf.float32)
        d = self._draws(b, c)
        x = self._geometric(x, d, b, h, w, p)
        x = self._color(x, d, b, c, p)
        x = self._imgfilter(x, d, b, h, w, p)
        if self.noise > 0:
            sigma = tf.abs(d.n()[:, None, None, None]) * self.noise_std
            sigma = tf.where(d.u()[:, None, None, None] < self.noise * p, sigma, 0.0)
            x = x + self._normal(tf.shape(x)) * sigma
        if self.cutout > 0:
            size = tf.where(d.u()[:, None, None, None] < self.cutout * p, self.cutout_size, 0.0)
            center = d.u(2)[:, :, None, None]
            cx = (tf.range(w, dtype=tf.float32)[None, None, :] + 0.5) / w  # [1, 1, W]
            cy = (tf.range(h, dtype=tf.float32)[None, :, None] + 0.5) / h  # [1, H, 1]
            keep_x = tf.abs(cx - center[:, 0, :, :]) >= size[:, 0] / 2  # [B, 1, W]
            keep_y = tf.abs(cy - center[:, 1, :, :]) >= size[:, 0] / 2  # [B, H, 1]
            mask = tf.cast(keep_x | keep_y, tf.float32)[..., None]
            x = x * mask
        d.check_all_taken()
        return tf.cast(x, in_dtype)

    def _geometric(self, x, d, b, h, w, p):
        if not any(m > 0 for m in (self.xflip, self.rotate90, self.xint, self.scale, self.rotate,
                                   self.aniso, self.xfrac)):
            return x
        eye = tf.eye(3, batch_shape=[b])
        g_inv = eye  # G_inv @ pixel_out -> pixel_in, pixel coordinates relative to the image centre
        active = tf.zeros([b], tf.bool)
        zeros, ones = tf.zeros([b]), tf.ones([b])
        if self.xflip > 0:
            i = tf.floor(d.u() * 2)
            gate = d.u() < self.xflip * p
            i = tf.where(gate, i, zeros)
            g_inv = g_inv @ _scale2d(1 - 2 * i, ones)  # its own inverse
            active |= gate
        if self.rotate90 > 0:
            i = tf.floor(d.u() * 4)
            gate = d.u() < self.rotate90 * p
            i = tf.where(gate, i, zeros)
            g_inv = g_inv @ _rotate2d(np.pi / 2 * i)  # inverse of rotate(-pi/2 * i)
            active |= gate
        if self.xint > 0:
            t = (d.u(2) * 2 - 1) * self.xint_max
            gate = d.u() < self.xint * p
            t = tf.where(gate[:, None], t, 0.0)
            g_inv = g_inv @ _translate2d(-tf.round(t[:, 0] * w), -tf.round(t[:, 1] * h))
            active |= gate
        if self.scale > 0:
            s = tf.pow(2.0, d.n() * self.scale_std)
            gate = d.u() < self.scale * p
            s = tf.where(gate, s, ones)
            g_inv = g_inv @ _scale2d(1 / s, 1 / s)
            active |= gate
        p_rot = 1 - tf.sqrt(tf.clip_by_value(1 - self.rotate * p, 0.0, 1.0))  # P(pre or post) = rotate * p
        if self.rotate > 0:
            theta = (d.u() * 2 - 1) * np.pi * self.rotate_max
            gate = d.u() < p_rot
            theta = tf.where(gate, theta, zeros)
            g_inv = g_inv @ _rotate2d(theta)  # inverse of rotate(-theta); before the anisotropic scaling
            active |= gate
        if self.aniso > 0:
            s = tf.pow(2.0, d.n() * self.aniso_std)
            gate = d.u() < self.aniso * p
            s = tf.where(gate, s, ones)
            g_inv = g_inv @ _scale2d(1 / s, s)
            active |= gate
        if self.rotate > 0:
            theta = (d.u() * 2 - 1) * np.pi * self.rotate_max
            gate = d.u() < p_rot
            theta = tf.where(gate, theta, zeros)
            g_inv = g_inv @ _rotate2d(theta)  # after the anisotropic scaling
            active |= gate
        if self.xfrac > 0:
            t = d.n(2) * self.xfrac_std
            gate = d.u() < self.xfrac * p
            t = tf.where(gate[:, None], t, 0.0)
            g_inv = g_inv @ _translate2d(-t[:, 0] * w, -t[:, 1] * h)
            active |= gate
        warped = tf.cond(tf.reduce_any(active), lambda: self._warp(x, g_inv, h, w), lambda: x)
        return tf.where(active[:, None, None, None], warped, x)

    def _geom_matrices(self, h, w):
        """Constant matrices of the warp's linear stages, built once per image size (NumPy)."""
        key = (h, w)
        if key not in self._caches.geom:
            hz = self._hz_geom
            hz_pad = hz.size // 4
            # Reflect-pad by the reference's largest margin (size - 1), then 2x upsample: one matrix.
            up_y = _upsample_matrix(3 * h - 2, hz) @ _reflect_matrix(h, h - 1)
            up_x = _upsample_matrix(3 * w - 2, hz) @ _reflect_matrix(w, w - 1)
            down_y = _downsample_matrix(h, hz, 2 * hz_pad)
            down_x = _downsample_matrix(w, hz, 2 * hz_pad)
            self._caches.geom[key] = [m.astype(np.float32) for m in (up_y, up_x, down_y, down_x)]
        return [tf.constant(m) for m in self._caches.geom[key]]  # NumPy cache: no tensors leak across graphs

    def _warp(self, x, g_inv, h, w):
        """Resample ``x`` with the inverse transforms ``g_inv`` ([B, 3, 3], centred pixel coords).

        reflect-pad (size - 1) -> upsample2d(sym6) -> bilinear sample -> downsample2d(sym6, crop),
        with the padding/upsampling and the downsampling done as constant matrices along H and W
        (the same numbers as ``upfirdn2d``; tested against it).
        """
        hz_pad = self._hz_geom.size // 4
        up_y, up_x, down_y, down_x = self._geom_matrices(h, w)
        x = _apply_rows_cols(x, up_y, up_x)
        hi, wi = 2 * (3 * h - 2), 2 * (3 * w - 2)
        # The transform in the upsampled image's centred coordinates (as the reference composes it).
        s2, s2_inv = _const_matrix(np.diag([2, 2, 1])), _const_matrix(np.diag([0.5, 0.5, 1]))
        t_half = _const_matrix([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
        t_half_inv = _const_matrix([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
        g = t_half @ (s2 @ g_inv @ s2_inv) @ t_half_inv
        ho, wo = (h + hz_pad * 2) * 2, (w + hz_pad * 2) * 2
        qx = np.arange(wo, dtype=np.float32) - (wo - 1) / 2
        qy = np.arange(ho, dtype=np.float32) - (ho - 1) / 2
        qx, qy = np.meshgrid(qx, qy)  # [Ho, Wo]
        q = tf.constant(np.stack([qx.ravel(), qy.ravel(), np.ones(qx.size, np.float32)]))  # [3, Ho*Wo]
        src = g[:, :2, :] @ q  # [B, 2, Ho*Wo]
        sx = tf.reshape(src[:, 0] + (wi - 1) / 2, [-1, ho, wo])
        sy = tf.reshape(src[:, 1] + (hi - 1) / 2, [-1, ho, wo])
        x = bilinear_sample(x, sx, sy)
        return _apply_rows_cols(x, down_y, down_x)

    def _color(self, x, d, b, c, p):
        use_rgb = c > 1
        ops = (self.brightness, self.contrast, self.lumaflip) + ((self.hue, self.saturation) if use_rgb else ())
        if not any(m > 0 for m in ops):
            return x
        if c not in (1, 3):
            raise ValueError(f"AugmentPipe color ops need 1 or 3 channels, got {c}")
        eye4 = tf.eye(4, batch_shape=[b])
        cm = eye4  # C @ color_in -> color_out
        active = tf.zeros([b], tf.bool)
        zeros, ones = tf.zeros([b]), tf.ones([b])
        v = (np.array([1, 1, 1, 0]) / np.sqrt(3)).astype(np.float32)  # luma axis
        vv = tf.constant(np.outer(v, v))
        if self.brightness > 0:
            br = d.n() * self.brightness_std
            gate = d.u() < self.brightness * p
            br = tf.where(gate, br, zeros)
            cm = _translate3d(br, br, br) @ cm
            active |= gate
        if self.contrast > 0:
            ct = tf.pow(2.0, d.n() * self.contrast_std)
            gate = d.u() < self.contrast * p
            ct = tf.where(gate, ct, ones)
            cm = _scale3d(ct, ct, ct) @ cm
            active |= gate
        if self.lumaflip > 0:
            i = tf.floor(d.u() * 2)
            gate = d.u() < self.lumaflip * p
            i = tf.where(gate, i, zeros)
            cm = (tf.eye(4) - 2 * vv * i[:, None, None]) @ cm  # Householder reflection
            active |= gate
        if self.hue > 0 and use_rgb:
            theta = (d.u() * 2 - 1) * np.pi * self.hue_max
            gate = d.u() < self.hue * p
            theta = tf.where(gate, theta, zeros)
            cm = _rotate3d(v[:3].tolist(), theta) @ cm
            active |= gate
        if self.saturation > 0 and use_rgb:
            s = tf.pow(2.0, d.n() * self.saturation_std)
            gate = d.u() < self.saturation * p
            s = tf.where(gate, s, ones)
            cm = (vv + (tf.eye(4) - vv) * s[:, None, None]) @ cm
            active |= gate
        if c == 3:
            y = tf.einsum("bij,bhwj->bhwi", cm[:, :3, :3], x) + cm[:, None, None, :3, 3]
        else:
            cm1 = tf.reduce_mean(cm[:, :3, :], axis=1)  # [B, 4]
            y = x * tf.reduce_sum(cm1[:, :3], axis=1)[:, None, None, None] + cm1[:, None, None, 3:]
        return tf.where(active[:, None, None, None], y, x)

    def _imgfilter(self, x, d, b, h, w, p):
        if not self.imgfilter > 0:
            return x
        bank = self._hz_fbank
        num_bands, taps = bank.shape
        expected_power = tf.constant(np.array([10, 1, 1, 1], np.float32) / 13)  # 1/f spectrum
        g = tf.ones([b, num_bands])
        active = tf.zeros([b], tf.bool)
        for i, band_strength in enumerate(self.imgfilter_bands):
            t_i = tf.pow(2.0, d.n() * self.imgfilter_std)
            gate = d.u() < self.imgfilter * p * band_strength
            t_i = tf.where(gate, t_i, tf.ones([b]))
            t = tf.concat([tf.ones([b, i]), t_i[:, None], tf.ones([b, num_bands - i - 1])], axis=1)
            t = t / tf.sqrt(tf.reduce_sum(expected_power * tf.square(t), axis=-1, keepdims=True))
            g = g * t
            active |= gate
        filt = g @ tf.constant(bank)  # [B, taps]; symmetric, so correlation == convolution
        shift_y, shift_x = self._filter_shifts(h, w)
        # Per image, filtering along an axis (after reflection padding) is a matrix sum_k filt[k] S_k.
        my = tf.einsum("bk,kij->bij", filt, shift_y)
        mx = tf.einsum("bk,kij->bij", filt, shift_x)
        y = _apply_rows_cols(x, my, mx)
        return tf.where(active[:, None, None, None], y, x)

    def _filter_shifts(self, h, w):
        """[taps, n, n] constants: tap k of the 'same' filter after reflection padding by taps // 2."""
        key = (h, w)
        if key not in self._caches.filter:
            taps = self._hz_fbank.shape[1]
            pad = taps // 2
            mats = []
            for n in (h, w):
                shifts = np.zeros([taps, n, n + 2 * pad])
                for k in range(taps):
                    shifts[k, np.arange(n), np.arange(n) + k] = 1
                mats.append((shifts @ _reflect_matrix(n, pad)).astype(np.float32))
            self._caches.filter[key] = mats
        return [tf.constant(m) for m in self._caches.filter[key]]


def make_augment_pipe(name="bgc", p=0.0, seed=None, **overrides):
    """An :class:`AugmentPipe` with the reference preset ``name`` (see ``AUGPIPE_SPECS``)."""
    if name not in AUGPIPE_SPECS:
        raise ValueError(f"unknown augment pipe {name!r}; one of {', '.join(AUGPIPE_SPECS)}")
    return AugmentPipe(**dict(AUGPIPE_SPECS[name], **overrides), p=p, seed=seed)
