"""Pixel conversions and the image grid (histaug_tf.data.images) against hand values of NVlabs'
formulas and a plain double loop."""
import numpy as np

from histaug_tf.data import images as I


def test_roundings_match_the_reference_formulas():
    x = np.array([-1.0, -0.985, 0.0, 0.5, 1.0, -2.0, 2.0], np.float32)
    # generate.py: (x * 127.5 + 128).clamp(0, 255) then truncation to uint8
    # -0.985 * 127.5 + 128 = 2.41; 0.5 * 127.5 + 128 = 191.75 (truncated, not rounded up)
    assert I.to_uint8(x).tolist() == [0, 2, 128, 191, 255, 0, 255]


def test_uint8_round_trip_is_the_identity():
    v = np.arange(256, dtype=np.uint8)
    f = I.uint8_to_float(v)
    assert f.dtype == np.float32 and f[0] == -1.0 and f[-1] == 1.0
    np.testing.assert_array_equal(I.to_uint8(f), v)


def test_image_grid_against_a_loop():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 3, 5, 2), dtype=np.uint8)
    for cols in (None, 1, 3, 7, 10):
        g = I.image_grid(imgs, cols)
        c = cols or 3  # ceil(sqrt(7))
        rows = -(-7 // c)
        ref = np.zeros((rows * 3, c * 5, 2), np.uint8)
        for i in range(7):
            r, q = divmod(i, c)
            for y in range(3):
                for x in range(5):
                    ref[r * 3 + y, q * 5 + x] = imgs[i, y, x]
        np.testing.assert_array_equal(g, ref)
