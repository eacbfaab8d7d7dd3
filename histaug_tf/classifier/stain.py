"""Classic (non-GAN) augmentation of the classifier's training batches: geometry and stain colour.

``--augment`` is a comma list of:

* ``flips`` — random horizontal and vertical flips and 90° rotations (the dihedral group; done by
  the input pipeline, ``data.pipeline``);
* ``hed`` = ``hed_light``, ``hed_strong`` — stain augmentation in HED space (Tellez et al. 2019,
  after Tellez et al. 2018): each image is separated into haematoxylin, eosin and DAB optical
  densities by Ruifrok & Johnston colour deconvolution, each channel is scaled by α and shifted
  by β (α ~ U(1 − σ, 1 + σ), β ~ U(−σ, σ), drawn per image and channel), and the image is
  recombined; σ = 0.05 (light) or 0.2 (strong), Tellez et al.'s two ranges;
* ``hsv`` = ``hsv_light``, ``hsv_strong`` — hue shift δh ~ U(−σ, σ) (hue on [0, 1), wrapping) and
  saturation scale 1 + δs, δs ~ U(−σ, σ), per image; σ = 0.1 (light) or 1 (strong), Tellez et
  al.'s ranges for HSV;
* ``bc`` — brightness shift b ~ U(−0.1, 0.1) and contrast factor c ~ U(0.8, 1.2) about each
  channel's image mean, per image (this project's ranges);
* ``none`` — nothing.

Colour augmentation works on whole batches of float images in [-1, 1] with pure TensorFlow ops
(no Python per image), in the order HED → HSV → BC, clipping to the valid range after each. Its
random numbers are stateless, drawn from a (seed, batch index) pair, so a run is reproducible and a
test can redraw exactly the parameters an image got (``draw_params``).

The deconvolution matrix is Ruifrok & Johnston's (2001) H, E, DAB vectors as rows
(0.65 0.70 0.29 / 0.07 0.99 0.11 / 0.27 0.57 0.78) and optical densities are normalised by
−log(10⁻⁶) with RGB floored at 10⁻⁶ — the conventions of scikit-image's ``rgb2hed``/``hed2rgb``,
against which ``tests/test_stain.py`` checks this implementation.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from histaug_tf.common import UserError

RGB_FROM_HED = np.array([[0.65, 0.70, 0.29],
                         [0.07, 0.99, 0.11],
                         [0.27, 0.57, 0.78]], np.float64)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
_EPS = 1e-6
_LOG_EPS = float(np.log(_EPS))

HED_SIGMA = {"hed_light": 0.05, "hed_strong": 0.2}
HSV_SIGMA = {"hsv_light": 0.1, "hsv_strong": 1.0}
BC_BRIGHTNESS = 0.1
BC_CONTRAST = 0.2
ALIASES = {"hed": "hed_light", "hsv": "hsv_light"}
TOKENS = ("flips", "hed", "hed_light", "hed_strong", "hsv", "hsv_light", "hsv_strong", "bc", "none")


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """What ``--augment`` asks for: geometry (``flips``) and the colour parts (None = off)."""
    flips: bool = False
    hed_sigma: float | None = None
    hsv_sigma: float | None = None
    bc: bool = False

    @property
    def colour(self) -> bool:
        return self.hed_sigma is not None or self.hsv_sigma is not None or self.bc

    def __str__(self) -> str:
        parts = ["flips"] if self.flips else []
        parts += [k for k, v in HED_SIGMA.items() if v == self.hed_sigma]
        parts += [k for k, v in HSV_SIGMA.items() if v == self.hsv_sigma]
        parts += ["bc"] if self.bc else []
        return ",".join(parts) or "none"


def parse_augment(spec) -> AugmentSpec:
    """``'flips,hed_strong'`` (or a list of tokens, or a bool: True = flips, False = none)."""
    if isinstance(spec, AugmentSpec):
        return spec
    if spec is None or spec is False:
        return AugmentSpec()
    if spec is True:
        return AugmentSpec(flips=True)
    tokens = [t.strip().lower() for t in (spec.split(",") if isinstance(spec, str) else spec)]
    tokens = [t for t in tokens if t]
    legacy = {"true": "flips", "1": "flips", "false": "none", "0": "none"}
    tokens = [legacy.get(t, t) for t in tokens]
    bad = [t for t in tokens if t not in TOKENS]
    if bad:
        raise UserError(f"--augment={spec}: unknown {bad[0]!r} (expected a comma list of "
                        f"{', '.join(TOKENS)})")
    if "none" in tokens and len(set(tokens)) > 1:
        raise UserError(f"--augment={spec}: 'none' cannot be combined with other augmentations")
    tokens = [ALIASES.get(t, t) for t in tokens]
    hed = [t for t in tokens if t in HED_SIGMA]
    hsv = [t for t in tokens if t in HSV_SIGMA]
    for kind, got in (("HED", hed), ("HSV", hsv)):
        if len(set(got)) > 1:
            raise UserError(f"--augment={spec}: give one {kind} range, not {' and '.join(got)}")
    return AugmentSpec(flips="flips" in tokens, hed_sigma=HED_SIGMA[hed[0]] if hed else None,
                       hsv_sigma=HSV_SIGMA[hsv[0]] if hsv else None, bc="bc" in tokens)


# ----------------------------------------------------------------------------- colour spaces

def rgb_to_hed(rgb):
    """RGB in [0, 1] (float, [..., 3]) → H, E, DAB optical densities (≥ 0), as ``rgb2hed``."""
    import tensorflow as tf
    rgb = tf.maximum(tf.cast(rgb, tf.float32), _EPS)
    od = tf.math.log(rgb) / _LOG_EPS
    return tf.maximum(tf.tensordot(od, tf.constant(HED_FROM_RGB, tf.float32), 1), 0.0)


def hed_to_rgb(hed):
    """H, E, DAB optical densities → RGB in [0, 1], as ``hed2rgb``."""
    import tensorflow as tf
    log_rgb = tf.tensordot(tf.cast(hed, tf.float32) * _LOG_EPS,
                           tf.constant(RGB_FROM_HED, tf.float32), 1)
    return tf.clip_by_value(tf.exp(log_rgb), 0.0, 1.0)


# ----------------------------------------------------------------------------- random parameters

def draw_params(spec: AugmentSpec, n, seed) -> dict:
    """Per-image parameters of a batch of ``n`` images from the stateless ``seed`` (shape [2]).

    One uniform draw [n, 10] on [0, 1), one column per parameter (a parameter's value does not
    depend on which other augmentations are on): columns 0–2 HED scale, 3–5 HED shift, 6 hue,
    7 saturation, 8 brightness, 9 contrast."""
    import tensorflow as tf
    u = tf.random.stateless_uniform([n, 10], seed=tf.cast(seed, tf.int64), dtype=tf.float32)
    sym = 2.0 * u - 1.0                                   # U(-1, 1)
    out = {}
    if spec.hed_sigma is not None:
        s = float(spec.hed_sigma)
        out["hed_scale"] = 1.0 + s * sym[:, 0:3]
        out["hed_shift"] = s * sym[:, 3:6]
    if spec.hsv_sigma is not None:
        s = float(spec.hsv_sigma)
        out["hue_shift"] = s * sym[:, 6]
        out["sat_scale"] = 1.0 + s * sym[:, 7]
    if spec.bc:
        out["brightness"] = BC_BRIGHTNESS * sym[:, 8]
        out["contrast"] = 1.0 + BC_CONTRAST * sym[:, 9]
    return out


def apply_params(rgb01, params: dict):
    """Apply the colour parameters of ``draw_params`` to a batch [N, H, W, 3] in [0, 1]."""
    import tensorflow as tf
    x = tf.cast(rgb01, tf.float32)
    if "hed_scale" in params:
        hed = rgb_to_hed(x)
        hed = hed * params["hed_scale"][:, None, None, :] + params["hed_shift"][:, None, None, :]
        x = hed_to_rgb(hed)
    if "hue_shift" in params:
        hsv = tf.image.rgb_to_hsv(x)
        h = tf.math.floormod(hsv[..., 0] + params["hue_shift"][:, None, None], 1.0)
        s = tf.clip_by_value(hsv[..., 1] * params["sat_scale"][:, None, None], 0.0, 1.0)
        x = tf.clip_by_value(tf.image.hsv_to_rgb(tf.stack([h, s, hsv[..., 2]], -1)), 0.0, 1.0)
    if "brightness" in params:
        mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        c = params["contrast"][:, None, None, None]
        x = tf.clip_by_value((x - mean) * c + mean + params["brightness"][:, None, None, None],
                             0.0, 1.0)
    return x


def colour_augment(images, seed, spec: AugmentSpec):
    """The colour part of ``spec`` on a batch of float images in [-1, 1] (RGB, [N, H, W, 3])."""
    import tensorflow as tf
    if not spec.colour:
        return images
    params = draw_params(spec, tf.shape(images)[0], seed)
    out = apply_params((tf.cast(images, tf.float32) + 1.0) * 0.5, params)
    return tf.cast(out * 2.0 - 1.0, images.dtype)
