"""VGG16 fc2 features (4096-d) for precision/recall, as NVlabs' ``pr50k3_full`` uses them.

``VGG16Features(path)`` loads the weights of Keras' ``VGG16(include_top=True)`` from a file the
user supplies (Keras' ``vgg16_weights_tf_dim_ordering_tf_kernels.h5``, or a ``.weights.h5`` saved
by Keras 3); nothing is downloaded. Images (NHWC in [-1, 1], the pipeline's range) are mapped to
[0, 255], resized bilinearly to 224x224 and preprocessed as Keras' VGG16 expects (RGB -> BGR, minus
the ImageNet channel means 103.939, 116.779, 123.68); the features are the ``fc2`` layer's output
(after its ReLU).
"""
from __future__ import annotations

import os

import numpy as np

from histaug_tf.common import UserError, file_sha256
from histaug_tf.metrics.inception import _BatchedExtractor

VGG_RESOLUTION = 224
BGR_MEAN = (103.939, 116.779, 123.68)
HELP = ("a Keras VGG16 (include_top=True) weights file, e.g. "
        "vgg16_weights_tf_dim_ordering_tf_kernels.h5")


def resolve_vgg16_weights(path, metric: str = "pr") -> str:
    """Absolute path of ``--vgg16_weights``; refuses a missing flag or file."""
    if path is None or path == "":
        raise UserError(f"--metrics={metric}: precision/recall uses VGG16 fc2 features and needs "
                        f"--vgg16_weights=PATH ({HELP}); or ask for {metric.split('_full')[0]}_inc "
                        "(precision/recall on the Inception features)")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: VGG16 weights file not found (expected {HELP})")
    with open(path, "rb") as f:
        if f.read(8) != b"\x89HDF\r\n\x1a\n":
            raise UserError(f"{path}: not an HDF5 Keras weights file (expected {HELP})")
    return os.path.abspath(path)


class VGG16Features(_BatchedExtractor):
    """Callable ``images [-1, 1] NHWC -> np.float32 [N, 4096]`` (VGG16 fc2)."""

    dim = 4096
    name_suffix = ""

    def __init__(self, weights_path, batch_size: int = 64, jit_compile: bool = False):
        import keras
        import tensorflow as tf

        path = resolve_vgg16_weights(weights_path)
        self.batch_size = int(batch_size)
        full = keras.applications.VGG16(include_top=True, weights=None,
                                         input_shape=(VGG_RESOLUTION, VGG_RESOLUTION, 3))
        try:
            full.load_weights(path)
        except Exception as e:  # noqa: BLE001 — any load failure is the file's problem
            raise UserError(f"{path}: not Keras VGG16 (include_top=True) weights: "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                            ) from None
        self.model = keras.Model(full.input, full.get_layer("fc2").output)
        self.identity = f"keras-vgg16-fc2-{VGG_RESOLUTION}px-sha256-{file_sha256(path)[:16]}"
        model = self.model
        mean = tf.constant(BGR_MEAN, tf.float32)

        def features(x):
            x = (tf.cast(x, tf.float32) + 1.0) * 127.5
            if x.shape[1] != VGG_RESOLUTION or x.shape[2] != VGG_RESOLUTION:
                x = tf.image.resize(x, [VGG_RESOLUTION, VGG_RESOLUTION], method="bilinear")
            return model(x[..., ::-1] - mean, training=False)

        self._fn = tf.function(features, jit_compile=jit_compile)


_cache: dict = {}


def get_vgg16(weights_path, batch_size: int = 64, jit_compile: bool = False) -> VGG16Features:
    key = (os.path.abspath(os.fspath(weights_path)) if weights_path else None, batch_size,
           jit_compile)
    if key not in _cache:
        _cache[key] = VGG16Features(weights_path, batch_size=batch_size, jit_compile=jit_compile)
    return _cache[key]
