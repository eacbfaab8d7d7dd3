"""Binary patch classifiers: a small CNN and Keras applications backbones.

Every model takes images in [-1, 1] (the pipeline's default pixel range), NHWC float32, and returns
one logit per image (float32 [N, 1], also under mixed precision). Backbones get their own ImageNet
input normalisation inside the model (a ``BackbonePreprocess`` layer), so callers never need to know
which convention a backbone was trained with.

``--weights``: ``none`` (random init), ``imagenet`` (Keras downloads the no-top weights — only when the
user asks), or a PATH to a weights file (for backbones: the Keras no-top ``.h5`` as downloaded by
``keras.applications``; for any model: a ``.weights.h5`` saved from a model of the same architecture).
"""
from __future__ import annotations

import os

import keras
from keras import layers

from histaug_tf.common import UserError

ARCHS = ("small_cnn", "resnet50", "densenet121", "efficientnetb0", "mobilenetv2")

# The input normalisation each backbone was trained with (keras.applications.*.preprocess_input).
_PREPROCESS_MODE = {
    "resnet50": "caffe",       # RGB->BGR, subtract the ImageNet means, 0..255 scale
    "densenet121": "torch",    # 0..1, then (x - mean) / std per channel
    "efficientnetb0": "raw",   # 0..255: the model has its own Rescaling/Normalization
    "mobilenetv2": "tf",       # -1..1
}


@keras.saving.register_keras_serializable(package="histaug_tf")
class BackbonePreprocess(layers.Layer):
    """Map images in [-1, 1] to a backbone's expected input (modes as keras.applications)."""

    _MEAN_CAFFE_BGR = (103.939, 116.779, 123.68)
    _MEAN_TORCH = (0.485, 0.456, 0.406)
    _STD_TORCH = (0.229, 0.224, 0.225)

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "torch", "raw", "tf"):
            raise ValueError(f"unknown preprocess mode {mode!r}")
        self.mode = mode

    def call(self, x):
        x = keras.ops.cast(x, self.compute_dtype)
        if self.mode == "tf":
            return x
        x255 = (x + 1.0) * 127.5
        if self.mode == "raw":
            return x255
        if self.mode == "caffe":
            x255 = x255[..., ::-1]
            return x255 - keras.ops.convert_to_tensor(self._MEAN_CAFFE_BGR, dtype=x.dtype)
        x01 = x255 / 255.0
        mean = keras.ops.convert_to_tensor(self._MEAN_TORCH, dtype=x.dtype)
        std = keras.ops.convert_to_tensor(self._STD_TORCH, dtype=x.dtype)
        return (x01 - mean) / std

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _small_cnn(inputs, widths=(16, 32, 64), dropout=0.2):
    x = inputs
    for i, w in enumerate(widths):
        for j in range(2):
            x = layers.Conv2D(w, 3, padding="same", use_bias=False, name=f"conv{i}_{j}")(x)
            x = layers.BatchNormalization(momentum=0.9, name=f"bn{i}_{j}")(x)
            x = layers.ReLU(name=f"relu{i}_{j}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    return x


def _check_weights(weights: str, arch: str):
    if weights in (None, "", "none"):
        return None
    if weights == "imagenet":
        if arch == "small_cnn":
            raise UserError("--weights=imagenet: the small CNN has no ImageNet weights")
        return "imagenet"
    if not os.path.isfile(weights):
        raise UserError(f"{weights}: --weights file not found (use none, imagenet, or a path)")
    return weights


def build_model(arch: str = "small_cnn", image_shape=(32, 32, 3), weights: str = "none",
                dropout: float = 0.2, widths=(16, 32, 64)) -> keras.Model:
    """Build a binary classifier returning logits [N, 1] (float32).

    arch: one of ``ARCHS``. image_shape: (H, W, C) at the study's resolution (backbones need
    H, W >= 32 and C == 3). weights: see the module docstring.
    """
    if arch not in ARCHS:
        raise UserError(f"--arch={arch}: unknown, expected one of {', '.join(ARCHS)}")
    h, w, c = (int(v) for v in image_shape)
    wpath = _check_weights(weights, arch)
    inputs = keras.Input((h, w, c), name="image")
    if arch == "small_cnn":
        feats = _small_cnn(inputs, widths=widths, dropout=dropout)
    else:
        if c != 3 or min(h, w) < 32:
            raise UserError(f"--arch={arch} needs RGB images of at least 32x32, got {h}x{w}x{c}")
        apps = {"resnet50": keras.applications.ResNet50,
                "densenet121": keras.applications.DenseNet121,
                "efficientnetb0": keras.applications.EfficientNetB0,
                "mobilenetv2": keras.applications.MobileNetV2}
        # A PATH given for a backbone is loaded below: first tried as the application's no-top file,
        # then as weights of the whole classifier (a .weights.h5 saved by this package).
        backbone_weights = "imagenet" if wpath == "imagenet" else None
        backbone = apps[arch](include_top=False, weights=backbone_weights, input_shape=(h, w, c),
                              pooling="avg")
        x = BackbonePreprocess(_PREPROCESS_MODE[arch], name="preprocess")(inputs)
        feats = backbone(x)
        if dropout:
            feats = layers.Dropout(dropout, name="dropout")(feats)
        if wpath not in (None, "imagenet"):
            try:
                backbone.load_weights(wpath)
                wpath = None  # consumed
            except Exception:  # noqa: BLE001 — fall through to whole-model weights below
                pass
    logits = layers.Dense(1, dtype="float32", name="logit")(feats)
    model = keras.Model(inputs, logits, name=arch)
    if wpath not in (None, "imagenet"):
        try:
            model.load_weights(wpath)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"{wpath}: cannot load as weights for --arch={arch}: "
                            f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    return model


# ----------------------------------------------------------------------------- export

def _core_preprocess(mode: str):
    """Core Keras layers equal to ``BackbonePreprocess(mode)`` (so an exported model needs no
    histaug_tf code to load): [-1, 1] in, the backbone's convention out."""
    import numpy as np
    if mode == "tf":
        return []
    to255 = layers.Rescaling(127.5, offset=127.5, name="to_0_255")
    if mode == "raw":
        return [to255]
    if mode == "torch":
        mean = np.asarray(BackbonePreprocess._MEAN_TORCH, np.float32)
        std = np.asarray(BackbonePreprocess._STD_TORCH, np.float32)
        return [layers.Rescaling(0.5, offset=0.5, name="to_0_1"),
                layers.Normalization(mean=mean, variance=std ** 2, name="imagenet_norm")]
    # caffe: RGB -> BGR (a permutation, exact in float) minus the ImageNet means
    perm = layers.Dense(3, use_bias=True, trainable=False, name="rgb_to_bgr_minus_mean")
    perm.build((None, 3))
    perm.set_weights([np.eye(3, dtype=np.float32)[:, ::-1],
                      -np.asarray(BackbonePreprocess._MEAN_CAFFE_BGR, np.float32)])
    return [to255, perm]


def export_model(model: keras.Model, stored_shape, resize_mode: str = "crop") -> keras.Model:
    """The trained classifier as one self-contained model for inference: uint8 RGB images at the
    dataset's stored size in, P(positive class) out ([N, 1], float32). The input mapping of the
    data pipeline (centre crop, white pad or antialiased bilinear resize to the training size,
    then [-1, 1]) is inside, built from core Keras layers only, so ``keras.models.load_model``
    loads it without histaug_tf. Shares the weights of ``model`` (a linear chain of layers)."""
    sh, sw, c = (int(v) for v in stored_shape)
    dh, dw = (int(v) for v in model.input_shape[1:3])
    inp = keras.Input((sh, sw, c), dtype="uint8", name="image_uint8")
    x = layers.Rescaling(1.0, name="to_float")(inp)
    if (sh, sw) != (dh, dw):
        if resize_mode == "crop":
            oy, ox = (sh - dh) // 2, (sw - dw) // 2
            x = layers.Cropping2D(((oy, sh - dh - oy), (ox, sw - dw - ox)), name="centre_crop")(x)
        elif resize_mode == "pad":
            py, px = dh - sh, dw - sw
            x = layers.Rescaling(1.0, offset=-255.0, name="white_to_zero")(x)
            x = layers.ZeroPadding2D(((py // 2, py - py // 2), (px // 2, px - px // 2)),
                                     name="centre_pad")(x)
            x = layers.Rescaling(1.0, offset=255.0, name="zero_to_white")(x)
        else:
            x = layers.Resizing(dh, dw, interpolation="bilinear", antialias=True,
                                name="resize")(x)
    x = layers.Rescaling(2.0 / 255.0, offset=-1.0, name="to_minus1_1")(x)
    for layer in model.layers[1:]:
        if isinstance(layer, BackbonePreprocess):
            for core in _core_preprocess(layer.mode):
                x = core(x)
        else:
            x = layer(x)
    prob = layers.Activation("sigmoid", dtype="float32", name="p_positive")(x)
    return keras.Model(inp, prob, name=f"{model.name}_inference")
