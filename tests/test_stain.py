"""Classic stain augmentation (classifier/stain.py) against independent references.

* the HED colour deconvolution against scikit-image's ``rgb2hed`` / ``hed2rgb`` (1e-5);
* the whole colour jitter (HED, HSV, brightness/contrast) against a NumPy loop per image and per
  pixel (scikit-image for HED, ``colorsys`` for HSV) on the same random draws;
* the parameter ranges against Tellez et al.'s light/strong ranges, reproducibility, the spec parser.
"""
import colorsys

import numpy as np
import pytest

skimage_color = pytest.importorskip("skimage.color")

from histaug_tf.classifier import stain  # noqa: E402
from histaug_tf.common import UserError  # noqa: E402


def _images(n=6, s=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, s, s, 3)).astype(np.float64) / 255.0
    x[0, 0, 0] = 0.0          # black (floored at 1e-6 before the log)
    x[0, 0, 1] = 1.0          # white
    return x


def test_hed_matches_scikit_image():
    x = _images()
    np.testing.assert_allclose(stain.rgb_to_hed(x).numpy(), skimage_color.rgb2hed(x), atol=1e-5)
    hed = skimage_color.rgb2hed(x)
    np.testing.assert_allclose(stain.hed_to_rgb(hed).numpy(), skimage_color.hed2rgb(hed), atol=1e-5)
    # the round trip restores every pixel whose stain densities were not clipped at 0
    x = skimage_color.hed2rgb(np.random.default_rng(1).random((4, 5, 5, 3)) * 0.2)  # H&E-like
    raw = (np.log(np.maximum(x, 1e-6)) / np.log(1e-6)) @ np.linalg.inv(stain.RGB_FROM_HED)
    keep = (raw > 0).all(-1)
    assert keep.sum() > 50
    back = stain.hed_to_rgb(stain.rgb_to_hed(x)).numpy()
    np.testing.assert_allclose(back[keep], x[keep], atol=1e-4)


def _numpy_jitter(x01, p):
    """The documented jitter, one image and one pixel at a time."""
    out = np.empty_like(x01)
    for i, img in enumerate(x01):
        img = img.copy()
        if "hed_scale" in p:
            hed = skimage_color.rgb2hed(img)
            hed = hed * p["hed_scale"][i] + p["hed_shift"][i]
            img = skimage_color.hed2rgb(hed)
        if "hue_shift" in p:
            for r in range(img.shape[0]):
                for c in range(img.shape[1]):
                    h, s, v = colorsys.rgb_to_hsv(*img[r, c])
                    h = (h + p["hue_shift"][i]) % 1.0
                    s = min(max(s * p["sat_scale"][i], 0.0), 1.0)
                    img[r, c] = colorsys.hsv_to_rgb(h, s, v)
            img = np.clip(img, 0, 1)
        if "brightness" in p:
            mean = img.mean(axis=(0, 1))
            img = np.clip((img - mean) * p["contrast"][i] + mean + p["brightness"][i], 0, 1)
        out[i] = img
    return out


@pytest.mark.parametrize("spec", ["hed_strong", "hsv_light", "bc", "flips,hed_light,hsv_strong,bc"])
def test_jitter_matches_numpy_loop_on_the_same_draws(spec):
    import tensorflow as tf
    sp = stain.parse_augment(spec)
    x = _images(n=8, s=4, seed=3)
    seed = tf.constant([7, 3], tf.int64)
    got = (stain.colour_augment(tf.constant(x * 2 - 1, tf.float32), seed, sp).numpy() + 1) / 2
    params = {k: v.numpy().astype(np.float64) for k, v in stain.draw_params(sp, 8, seed).items()}
    want = _numpy_jitter(x, params)
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.abs(got - x).max() > 0.01  # it did change the images


def test_ranges_are_tellez_light_and_strong():
    import tensorflow as tf
    for name, sigma in (("hed_light", 0.05), ("hed_strong", 0.2)):
        p = stain.draw_params(stain.parse_augment(name), 20000, tf.constant([1, 2], tf.int64))
        sc, sh = p["hed_scale"].numpy(), p["hed_shift"].numpy()
        assert sc.min() >= 1 - sigma and sc.max() <= 1 + sigma
        assert sc.min() < 1 - 0.99 * sigma and sc.max() > 1 + 0.99 * sigma
        assert -sigma <= sh.min() < -0.99 * sigma and sigma >= sh.max() > 0.99 * sigma
        # the three channels and scale/shift are drawn independently
        c = np.corrcoef(np.concatenate([sc, sh], 1).T)
        assert np.abs(c - np.eye(6)).max() < 0.05
    p = stain.draw_params(stain.parse_augment("hsv_strong"), 20000, tf.constant([1, 2], tf.int64))
    assert p["hue_shift"].numpy().min() < -0.99 and p["hue_shift"].numpy().max() > 0.99


def test_reproducible_and_per_batch():
    import tensorflow as tf
    sp = stain.parse_augment("hed_strong,bc")
    x = tf.constant(_images() * 2 - 1, tf.float32)
    a = stain.colour_augment(x, tf.constant([5, 0], tf.int64), sp).numpy()
    b = stain.colour_augment(x, tf.constant([5, 0], tf.int64), sp).numpy()
    c = stain.colour_augment(x, tf.constant([5, 1], tf.int64), sp).numpy()
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_parse():
    assert str(stain.parse_augment("flips")) == "flips"
    assert str(stain.parse_augment("hed,hsv")) == "hed_light,hsv_light"
    assert str(stain.parse_augment(True)) == "flips" and str(stain.parse_augment("none")) == "none"
    assert not stain.parse_augment("flips").colour and stain.parse_augment("bc").colour
    for bad, msg in (("hed,hed_strong", "one HED range"), ("flips,none", "'none'"),
                     ("stain", "unknown 'stain'")):
        with pytest.raises(UserError, match=msg):
            stain.parse_augment(bad)
