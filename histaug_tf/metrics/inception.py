"""Inception-v3 pool features (2048-d) for FID / KID / precision-recall, with Keras' InceptionV3.

``InceptionFeatures(weights=...)``:
  * ``weights=None`` — random weights drawn from a seeded NumPy generator (He-normal kernels, BN
    statistics at identity). For tests and timing only: no download, and the same seed gives the
    same network on every machine.
  * ``weights='imagenet'`` — Keras' ImageNet weights (downloaded by Keras on first use; only when
    the user asks for it).
  * ``weights=PATH`` — a Keras weights file for ``InceptionV3(include_top=False)``
    (e.g. Keras' ``inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5``).

Images go in as float NHWC in [-1, 1] (the pipeline's range, which is what Keras' Inception
preprocessing produces), any size, 1 or 3 channels; they are resized to ``resolution`` (299)
with bilinear interpolation and grey images are repeated to RGB.

Note: the NVlabs metrics use a specific TF-Inception graph (``inception-2015-12-05``); Keras'
InceptionV3 ImageNet weights are a different network, so absolute FID/KID values computed here are
not comparable with published numbers — compare runs with each other, with the same extractor.
"""
from __future__ import annotations

import os

import numpy as np

from histaug_tf.common import UserError, file_sha256

FEATURE_DIM = 2048


class InceptionFeatures:
    """Callable ``images [-1,1] NHWC -> np.float32 [N, 2048]``; ``identity`` names the extractor
    (architecture, weights, input size) for the real-statistics cache."""

    dim = FEATURE_DIM

    def __init__(self, weights=None, seed: int = 0, resolution: int = 299, batch_size: int = 64,
                 jit_compile: bool = False):
        if weights not in (None, "random", "imagenet") and not os.path.isfile(os.fspath(weights)):
            raise UserError(f"{os.fspath(weights)}: Inception weights file not found")
        if resolution < 75:
            raise UserError(f"--inception_resolution={resolution}: InceptionV3 needs at least 75")
        import keras
        import tensorflow as tf

        self.resolution = int(resolution)
        self.batch_size = int(batch_size)
        shape = (self.resolution, self.resolution, 3)
        if weights is None or weights == "random":
            model = keras.applications.InceptionV3(include_top=False, pooling="avg", weights=None,
                                                   input_shape=shape)
            _seeded_init(model, seed)
            wid = f"random-seed{seed}"
        elif weights == "imagenet":
            model = keras.applications.InceptionV3(include_top=False, pooling="avg",
                                                   weights="imagenet", input_shape=shape)
            wid = "imagenet"
        else:
            path = os.fspath(weights)  # existence checked above
            with open(path, "rb") as f:
                if f.read(8) != b"\x89HDF\r\n\x1a\n":
                    raise UserError(f"{path}: not an HDF5 Keras weights file (.weights.h5 / .h5)")
            model = keras.applications.InceptionV3(include_top=False, pooling="avg", weights=None,
                                                   input_shape=shape)
            try:
                model.load_weights(path)
            except Exception as e:  # noqa: BLE001 — any load failure is the file's problem
                raise UserError(f"{path}: not InceptionV3 (include_top=False) weights: "
                                f"{type(e).__name__}: {e}") from None
            wid = "sha256-" + file_sha256(path)[:16]
        self.model = model
        self.identity = f"keras-inception_v3-avgpool-{self.resolution}px-{wid}"
        res = self.resolution

        def features(x):
            x = tf.cast(x, tf.float32)
            if x.shape[1] != res or x.shape[2] != res:
                x = tf.image.resize(x, [res, res], method="bilinear")
            return model(x, training=False)

        # Batches are padded to batch_size, so this traces once per input image size.
        self._fn = tf.function(features, jit_compile=jit_compile)

    def __call__(self, images) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"expected NHWC images with 1 or 3 channels, got {images.shape}")
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        n = images.shape[0]
        out = []
        b = self.batch_size
        for i in range(0, n, b):
            x = images[i:i + b]
            k = x.shape[0]
            if k < b:  # pad to a fixed batch so the function is traced once
                x = np.concatenate([x, np.zeros((b - k,) + x.shape[1:], np.float32)], 0)
            out.append(np.asarray(self._fn(x))[:k])
        if not out:
            return np.zeros([0, self.dim], np.float32)
        return np.concatenate(out, 0).astype(np.float32)


def _seeded_init(model, seed: int) -> None:
    """Deterministic random weights: He-normal conv/dense kernels, zero biases/betas, BN moving
    statistics at identity. Activations then keep an O(1) scale through the ~95 layers (Keras'
    default Glorot init shrinks them to ~1e-3)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        name = w.path.split("/")[-1]
        shape = tuple(w.shape)
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            val = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        elif name in ("moving_variance", "gamma"):
            val = np.ones(shape, np.float32)
        else:  # bias, beta, moving_mean
            val = np.zeros(shape, np.float32)
        w.assign(val)


_cache: dict = {}


def get_inception(weights=None, seed: int = 0, resolution: int = 299, batch_size: int = 64,
                  jit_compile: bool = False) -> InceptionFeatures:
    """A process-wide cached ``InceptionFeatures`` (building it takes seconds)."""
    key = (None if weights is None else str(weights), seed, resolution, batch_size, jit_compile)
    if key not in _cache:
        _cache[key] = InceptionFeatures(weights, seed=seed, resolution=resolution,
                                        batch_size=batch_size, jit_compile=jit_compile)
    return _cache[key]
