"""Pixel conversions and image grids, in NumPy: the one place that says how a float image in
[-1, 1] becomes uint8 and back, and how a batch becomes one picture.

``to_uint8`` is NVlabs' ``generate.py`` conversion, ``(x * 127.5 + 128).clamp(0, 255)`` truncated to
uint8, i.e. ``floor(y + 0.5)`` with ``y = (x + 1) * 127.5``: rounding half up. Their training grids
(``save_image_grid``) use ``rint(y)``, rounding half to even; the two differ only where ``y`` is
exactly k + 0.5, so one conversion serves both.
"""
from __future__ import annotations

import numpy as np


def to_uint8(images) -> np.ndarray:
    """[-1, 1] float images to uint8 by truncation: ``floor(x * 127.5 + 128)`` clipped to [0, 255]."""
    x = np.asarray(images, np.float32)
    return np.clip(np.floor(x * 127.5 + 128.0), 0, 255).astype(np.uint8)


def uint8_to_float(images) -> np.ndarray:
    """uint8 to [-1, 1] float32 (``x / 127.5 - 1``), the pipeline's ``pixel_range=(-1, 1)``."""
    return np.asarray(images, np.float32) / np.float32(127.5) - np.float32(1.0)


def image_grid(images, cols: int | None = None) -> np.ndarray:
    """uint8 [N, H, W, C] -> one uint8 [rows*H, cols*W, C] image, row-major, black padding.
    ``cols`` defaults to ``ceil(sqrt(N))``."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    cols = int(cols or int(np.ceil(np.sqrt(n))))
    rows = -(-n // cols)
    pad = rows * cols - n
    if pad:
        images = np.concatenate([images, np.zeros((pad, h, w, c), images.dtype)])
    return images.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)
