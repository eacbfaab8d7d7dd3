"""Inception features for FID / KID (2048-d pool3), as the literature computes them.

**The FID Inception** (``FIDInception``): the ``inception-2015-12-05`` network that published FIDs
use, as pytorch-fid defines it — torchvision's Inception-v3 stem and blocks (Conv2d without bias +
BatchNorm(eps=0.001) + ReLU; InceptionB/D reductions with 3x3/2 max pooling) with the FID
variants of the A, C and E blocks: their pooling branch averages over a 3x3 window *without* the
zero padding (``count_include_pad=False``, TensorFlow's 'SAME' average pooling), and the last E
block (Mixed_7c) max-pools instead. The 1008-class head is not used. Input: uint8 [0, 255] ->
[0, 1] -> bilinear resize to 299x299 (half-pixel centres, no antialiasing, as
``F.interpolate(mode='bilinear', align_corners=False)``) -> ``2x - 1``; output: the global average
pool of Mixed_7c, 2048-d.

Weights come from pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a PyTorch state dict),
read by ``torchfile.state_dict.load_state_dict`` — no torch at run time, no code from the file is
run.

``fid_features(images_uint8, weights_path) -> np.float64 [N, 2048]`` is the one-call API.

Other extractors, for tests and for users without the file — their metric names carry a suffix so
their values are never mistaken for comparable ones:
  * ``weights='random'``: the same FID network with seeded random weights (``_random``);
  * ``weights='keras_imagenet'``: Keras' ImageNet ``InceptionV3(include_top=False,
    pooling='avg')`` (a different network; Keras downloads its weights on first use) (``_kerasinc``).

Extractors are callables ``images NHWC float in [-1, 1] -> np.float32 [N, dim]`` (the pipeline's
range; ``(x + 1) / 2`` is the [0, 1] image), with ``identity`` (for the real-statistics cache),
``dim`` and ``name_suffix``.
"""
from __future__ import annotations

import os

import numpy as np

from histaug_tf.common import UserError, file_sha256

FEATURE_DIM = 2048
FID_RESOLUTION = 299
RANDOM = "random"
KERAS_IMAGENET = "keras_imagenet"
WEIGHTS_HELP = ("pytorch-fid's pt_inception-2015-12-05-6726825d.pth (the FID Inception of published "
                "numbers), or 'random' (seeded random weights: smoke tests; metric names get "
                "_random), or 'keras_imagenet' (Keras' ImageNet InceptionV3, another network; "
                "names get _kerasinc)")


# ------------------------------------------------------------------------------------------------
# The architecture: (torch module name, layer spec) in forward order.
# ------------------------------------------------------------------------------------------------

def _conv_specs():
    """Every BasicConv2d as ``name -> (in, out, (kh, kw), stride, padded)`` (torchvision names)."""
    s = {}

    def c(name, cin, cout, k, stride=1, pad=False):
        s[name] = (cin, cout, (k, k) if isinstance(k, int) else tuple(k), stride, pad)

    c("Conv2d_1a_3x3", 3, 32, 3, 2)
    c("Conv2d_2a_3x3", 32, 32, 3)
    c("Conv2d_2b_3x3", 32, 64, 3, pad=True)
    c("Conv2d_3b_1x1", 64, 80, 1)
    c("Conv2d_4a_3x3", 80, 192, 3)
    for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        c(f"{name}.branch1x1", cin, 64, 1)
        c(f"{name}.branch5x5_1", cin, 48, 1)
        c(f"{name}.branch5x5_2", 48, 64, 5, pad=True)
        c(f"{name}.branch3x3dbl_1", cin, 64, 1)
        c(f"{name}.branch3x3dbl_2", 64, 96, 3, pad=True)
        c(f"{name}.branch3x3dbl_3", 96, 96, 3, pad=True)
        c(f"{name}.branch_pool", cin, pool, 1)
    c("Mixed_6a.branch3x3", 288, 384, 3, 2)
    c("Mixed_6a.branch3x3dbl_1", 288, 64, 1)
    c("Mixed_6a.branch3x3dbl_2", 64, 96, 3, pad=True)
    c("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 2)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        c(f"{name}.branch1x1", 768, 192, 1)
        c(f"{name}.branch7x7_1", 768, c7, 1)
        c(f"{name}.branch7x7_2", c7, c7, (1, 7), pad=True)
        c(f"{name}.branch7x7_3", c7, 192, (7, 1), pad=True)
        c(f"{name}.branch7x7dbl_1", 768, c7, 1)
        c(f"{name}.branch7x7dbl_2", c7, c7, (7, 1), pad=True)
        c(f"{name}.branch7x7dbl_3", c7, c7, (1, 7), pad=True)
        c(f"{name}.branch7x7dbl_4", c7, c7, (7, 1), pad=True)
        c(f"{name}.branch7x7dbl_5", c7, 192, (1, 7), pad=True)
        c(f"{name}.branch_pool", 768, 192, 1)
    c("Mixed_7a.branch3x3_1", 768, 192, 1)
    c("Mixed_7a.branch3x3_2", 192, 320, 3, 2)
    c("Mixed_7a.branch7x7x3_1", 768, 192, 1)
    c("Mixed_7a.branch7x7x3_2", 192, 192, (1, 7), pad=True)
    c("Mixed_7a.branch7x7x3_3", 192, 192, (7, 1), pad=True)
    c("Mixed_7a.branch7x7x3_4", 192, 192, 3, 2)
    for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        c(f"{name}.branch1x1", cin, 320, 1)
        c(f"{name}.branch3x3_1", cin, 384, 1)
        c(f"{name}.branch3x3_2a", 384, 384, (1, 3), pad=True)
        c(f"{name}.branch3x3_2b", 384, 384, (3, 1), pad=True)
        c(f"{name}.branch3x3dbl_1", cin, 448, 1)
        c(f"{name}.branch3x3dbl_2", 448, 384, 3, pad=True)
        c(f"{name}.branch3x3dbl_3a", 384, 384, (1, 3), pad=True)
        c(f"{name}.branch3x3dbl_3b", 384, 384, (3, 1), pad=True)
        c(f"{name}.branch_pool", cin, 192, 1)
    return s


CONV_SPECS = _conv_specs()
HEAD_KEYS = {"fc.weight": (1008, 2048), "fc.bias": (1008,)}  # in the file, not used


def expected_state_shapes() -> dict:
    """``{state dict key: shape}`` of the FID Inception (pytorch-fid / torchvision naming)."""
    out = {}
    for name, (cin, cout, (kh, kw), _s, _p) in CONV_SPECS.items():
        out[f"{name}.conv.weight"] = (cout, cin, kh, kw)
        for p in ("weight", "bias", "running_mean", "running_var"):
            out[f"{name}.bn.{p}"] = (cout,)
    return out


def build_fid_inception(resolution: int = FID_RESOLUTION):
    """The Keras model ``[N, res, res, 3] in [-1, 1] -> [N, 2048]`` and ``{name: (conv, bn)}``."""
    import keras
    from keras import layers

    layer_map = {}

    def conv(x, name):
        _cin, cout, k, stride, pad = CONV_SPECS[name]
        key = name.replace(".", "__")
        cv = layers.Conv2D(cout, k, strides=stride, padding="same" if pad else "valid",
                           use_bias=False, name=f"{key}__conv")
        bn = layers.BatchNormalization(epsilon=0.001, name=f"{key}__bn")
        layer_map[name] = (cv, bn)
        return layers.ReLU(name=f"{key}__relu")(bn(cv(x)))

    def avg_pool_excl_pad(x):  # TF 'SAME' average pooling divides by the unpadded count
        return layers.AveragePooling2D(3, strides=1, padding="same")(x)

    def block_a(x, n):
        b1 = conv(x, f"{n}.branch1x1")
        b5 = conv(conv(x, f"{n}.branch5x5_1"), f"{n}.branch5x5_2")
        b3 = conv(conv(conv(x, f"{n}.branch3x3dbl_1"), f"{n}.branch3x3dbl_2"), f"{n}.branch3x3dbl_3")
        bp = conv(avg_pool_excl_pad(x), f"{n}.branch_pool")
        return layers.Concatenate(name=n)([b1, b5, b3, bp])

    def block_b(x, n):
        b3 = conv(x, f"{n}.branch3x3")
        bd = conv(conv(conv(x, f"{n}.branch3x3dbl_1"), f"{n}.branch3x3dbl_2"), f"{n}.branch3x3dbl_3")
        bp = layers.MaxPooling2D(3, strides=2)(x)
        return layers.Concatenate(name=n)([b3, bd, bp])

    def block_c(x, n):
        b1 = conv(x, f"{n}.branch1x1")
        b7 = x
        for i in (1, 2, 3):
            b7 = conv(b7, f"{n}.branch7x7_{i}")
        bd = x
        for i in (1, 2, 3, 4, 5):
            bd = conv(bd, f"{n}.branch7x7dbl_{i}")
        bp = conv(avg_pool_excl_pad(x), f"{n}.branch_pool")
        return layers.Concatenate(name=n)([b1, b7, bd, bp])

    def block_d(x, n):
        b3 = conv(conv(x, f"{n}.branch3x3_1"), f"{n}.branch3x3_2")
        b7 = x
        for i in (1, 2, 3, 4):
            b7 = conv(b7, f"{n}.branch7x7x3_{i}")
        bp = layers.MaxPooling2D(3, strides=2)(x)
        return layers.Concatenate(name=n)([b3, b7, bp])

    def block_e(x, n, max_pool):
        b1 = conv(x, f"{n}.branch1x1")
        t = conv(x, f"{n}.branch3x3_1")
        b3 = layers.Concatenate()([conv(t, f"{n}.branch3x3_2a"), conv(t, f"{n}.branch3x3_2b")])
        t = conv(conv(x, f"{n}.branch3x3dbl_1"), f"{n}.branch3x3dbl_2")
        bd = layers.Concatenate()([conv(t, f"{n}.branch3x3dbl_3a"), conv(t, f"{n}.branch3x3dbl_3b")])
        if max_pool:  # the FID network's Mixed_7c: max pooling (pytorch-fid FIDInceptionE_2)
            p = layers.MaxPooling2D(3, strides=1, padding="same")(x)
        else:
            p = avg_pool_excl_pad(x)
        bp = conv(p, f"{n}.branch_pool")
        return layers.Concatenate(name=n)([b1, b3, bd, bp])

    inp = keras.Input((resolution, resolution, 3), name="image")
    x = conv(inp, "Conv2d_1a_3x3")
    x = conv(x, "Conv2d_2a_3x3")
    x = conv(x, "Conv2d_2b_3x3")
    x = layers.MaxPooling2D(3, strides=2)(x)
    x = conv(x, "Conv2d_3b_1x1")
    x = conv(x, "Conv2d_4a_3x3")
    x = layers.MaxPooling2D(3, strides=2)(x)
    for n in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        x = block_a(x, n)
    x = block_b(x, "Mixed_6a")
    for n in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        x = block_c(x, n)
    x = block_d(x, "Mixed_7a")
    x = block_e(x, "Mixed_7b", max_pool=False)
    x = block_e(x, "Mixed_7c", max_pool=True)
    out = layers.GlobalAveragePooling2D(name="pool3")(x)
    return keras.Model(inp, out, name="fid_inception_v3"), layer_map


def check_state_dict(state: dict, path: str = "state dict") -> None:
    """Refuse a state dict that is not the FID Inception's (missing, extra or mis-shaped keys)."""
    want = expected_state_shapes()
    missing = [k for k in want if k not in state]
    if missing:
        raise UserError(f"{path}: not the FID Inception weights: {len(missing)} tensors missing "
                        f"(first: {missing[0]}); expected {WEIGHTS_HELP.split(',')[0]}")
    extra = [k for k in state if k not in want and k not in HEAD_KEYS
             and not k.endswith(".num_batches_tracked")]
    if extra:
        raise UserError(f"{path}: not the FID Inception weights: unexpected tensor {extra[0]}")
    for k, shape in want.items():
        if tuple(state[k].shape) != shape:
            raise UserError(f"{path}: {k} has shape {tuple(state[k].shape)}, expected {shape}")


def assign_state_dict(layer_map: dict, state: dict) -> None:
    """Copy torch-layout tensors into the Keras layers (conv OIHW -> HWIO)."""
    for name, (cv, bn) in layer_map.items():
        w = np.asarray(state[f"{name}.conv.weight"], np.float32)
        cv.set_weights([np.transpose(w, (2, 3, 1, 0))])
        bn.set_weights([np.asarray(state[f"{name}.bn.{p}"], np.float32)
                        for p in ("weight", "bias", "running_mean", "running_var")])


def random_state_dict(seed: int = 0) -> dict:
    """Seeded random weights in the file's layout: He-normal convs, BN statistics at identity
    (activations keep an O(1) scale through the network)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, shape in expected_state_shapes().items():
        if k.endswith(".conv.weight"):
            fan_in = int(np.prod(shape[1:]))
            out[k] = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        elif k.endswith((".bn.weight", ".bn.running_var")):
            out[k] = np.ones(shape, np.float32)
        else:
            out[k] = np.zeros(shape, np.float32)
    return out


class _BatchedExtractor:
    """Runs ``self._fn`` on fixed-size batches (the last one padded: one trace per image size)."""

    dim = FEATURE_DIM
    batch_size = 64

    def _prepare(self, images) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"expected NHWC images with 1 or 3 channels, got {images.shape}")
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        return images

    def __call__(self, images) -> np.ndarray:
        images = self._prepare(images)
        out, b = [], self.batch_size
        for i in range(0, images.shape[0], b):
            x = images[i:i + b]
            k = x.shape[0]
            if k < b:
                x = np.concatenate([x, np.zeros((b - k,) + x.shape[1:], np.float32)], 0)
            out.append(np.asarray(self._fn(x))[:k])
        if not out:
            return np.zeros([0, self.dim], np.float32)
        return np.concatenate(out, 0).astype(np.float32)


class FIDInception(_BatchedExtractor):
    """The FID Inception as an extractor. ``weights``: a pytorch-fid ``.pth`` PATH, a state dict
    (``{name: array}``), or 'random' (``random_state_dict(seed)``).

    ``resolution`` other than 299 is for tests only (the network is defined for 299)."""

    def __init__(self, weights, seed: int = 0, resolution: int = FID_RESOLUTION,
                 batch_size: int = 64, jit_compile: bool = False):
        import tensorflow as tf

        if int(resolution) < 75:
            raise UserError(f"--inception_resolution={resolution}: Inception-v3 needs at least 75")
        if isinstance(weights, dict):
            state, wid, suffix = weights, "state-dict", "_custom"
        elif weights == RANDOM:
            state, wid, suffix = random_state_dict(seed), f"random-seed{seed}", "_random"
        else:
            path = os.fspath(weights)
            if not os.path.isfile(path):
                raise UserError(f"{path}: Inception weights file not found (expected {WEIGHTS_HELP})")
            from histaug_tf.torchfile.state_dict import load_state_dict

            state, wid, suffix = load_state_dict(path), "sha256-" + file_sha256(path)[:16], ""
            check_state_dict(state, path)
        if resolution != FID_RESOLUTION and suffix == "":
            raise UserError(f"--inception_resolution={resolution}: the FID Inception is defined at "
                            f"{FID_RESOLUTION} px (other sizes only with random weights)")
        if isinstance(weights, dict):
            check_state_dict(state)
        self.resolution = int(resolution)
        self.batch_size = int(batch_size)
        self.model, layer_map = build_fid_inception(self.resolution)
        assign_state_dict(layer_map, state)
        self.name_suffix = suffix
        self.identity = f"fid-inception-2015-12-05-pool3-{self.resolution}px-{wid}"
        model, res = self.model, self.resolution

        def features(x):  # x in [-1, 1]
            x01 = (tf.cast(x, tf.float32) + 1.0) * 0.5
            if x01.shape[1] != res or x01.shape[2] != res:
                x01 = tf.image.resize(x01, [res, res], method="bilinear", antialias=False)
            return model(x01 * 2.0 - 1.0, training=False)

        self._fn = tf.function(features, jit_compile=jit_compile)

    def features_uint8(self, images) -> np.ndarray:
        """uint8 [0, 255] NHWC -> float64 [N, 2048]."""
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images, got {images.dtype}")
        x = images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        return self(x).astype(np.float64)


def fid_features(images, weights_path, batch_size: int = 64) -> np.ndarray:
    """FID Inception pool3 features ``np.float64 [N, 2048]`` of uint8 NHWC images of any size
    (``weights_path``: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``)."""
    return get_inception(weights_path, batch_size=batch_size).features_uint8(images)


class KerasInceptionV3(_BatchedExtractor):
    """Keras' ImageNet ``InceptionV3(include_top=False, pooling='avg')`` (not the FID network).
    ``weights=None`` builds it with Keras' random initialisation (tests only)."""

    name_suffix = "_kerasinc"

    def __init__(self, weights="imagenet", resolution: int = FID_RESOLUTION, batch_size: int = 64,
                 jit_compile: bool = False):
        import keras
        import tensorflow as tf

        self.resolution = int(resolution)
        self.batch_size = int(batch_size)
        self.model = keras.applications.InceptionV3(
            include_top=False, pooling="avg", weights=weights,
            input_shape=(self.resolution, self.resolution, 3))
        self.identity = f"keras-inception_v3-avgpool-{self.resolution}px-{weights or 'init'}"
        model, res = self.model, self.resolution

        def features(x):  # Keras' Inception preprocessing is x / 127.5 - 1: the range we get
            x = tf.cast(x, tf.float32)
            if x.shape[1] != res or x.shape[2] != res:
                x = tf.image.resize(x, [res, res], method="bilinear")
            return model(x, training=False)

        self._fn = tf.function(features, jit_compile=jit_compile)


def resolve_weights(weights) -> str:
    """Check ``--inception_weights`` without building anything: returns 'random',
    'keras_imagenet' or an absolute file path; refuses None/'' and a missing file."""
    if weights is None or weights == "":
        raise UserError(f"--inception_weights is required: {WEIGHTS_HELP}")
    weights = os.fspath(weights)
    if weights in (RANDOM, KERAS_IMAGENET):
        return weights
    if weights == "imagenet":
        raise UserError("--inception_weights=imagenet: renamed keras_imagenet (Keras' ImageNet "
                        "InceptionV3 is not the FID network; its metric names get _kerasinc)")
    if not os.path.isfile(weights):
        raise UserError(f"{weights}: Inception weights file not found (expected {WEIGHTS_HELP})")
    return os.path.abspath(weights)


_cache: dict = {}


def get_inception(weights, seed: int = 0, resolution: int = FID_RESOLUTION, batch_size: int = 64,
                  jit_compile: bool = False):
    """A process-wide cached extractor for ``--inception_weights`` (building one takes seconds)."""
    weights = resolve_weights(weights)
    key = (weights, seed, resolution, batch_size, jit_compile)
    if key not in _cache:
        if weights == KERAS_IMAGENET:
            if resolution != FID_RESOLUTION:
                raise UserError("--inception_resolution: only with --inception_weights=random")
            _cache[key] = KerasInceptionV3("imagenet", batch_size=batch_size,
                                           jit_compile=jit_compile)
        else:
            _cache[key] = FIDInception(weights, seed=seed, resolution=resolution,
                                       batch_size=batch_size, jit_compile=jit_compile)
    return _cache[key]
