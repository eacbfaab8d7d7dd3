"""Classifier models: shapes, the backbone input normalisation against keras.applications'
own preprocess_input, and --weights=PATH round trips. Never downloads."""
import numpy as np
import pytest

import keras

from histaug_tf.classifier import models
from histaug_tf.common import UserError


def _imgs(n=2, s=32, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, s, s, 3)).astype("float32")


def test_small_cnn_logits_shape_and_dtype():
    m = models.build_model("small_cnn", (32, 32, 3))
    out = m(_imgs(3), training=False)
    assert tuple(out.shape) == (3, 1) and keras.backend.standardize_dtype(out.dtype) == "float32"


@pytest.mark.parametrize("arch,app_module", [
    ("resnet50", keras.applications.resnet50),
    ("densenet121", keras.applications.densenet),
    ("mobilenetv2", keras.applications.mobilenet_v2),
    ("efficientnetb0", keras.applications.efficientnet),
])
def test_backbone_preprocess_matches_keras_applications(arch, app_module):
    x = _imgs(2, 8)
    x255 = (x + 1.0) * 127.5
    ref = np.asarray(app_module.preprocess_input(x255.copy()))
    got = np.asarray(models.BackbonePreprocess(models._PREPROCESS_MODE[arch])(x))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


def test_weights_path_roundtrip_and_errors(tmp_path):
    m = models.build_model("small_cnn", (32, 32, 3))
    x = _imgs(4)
    # make BN statistics non-trivial, then save
    for v in m.weights:
        v.assign(np.random.default_rng(1).normal(size=v.shape).astype("float32") * 0.1
                 + (1.0 if "variance" in v.path else 0.0))
    p = str(tmp_path / "w.weights.h5")
    m.save_weights(p)
    m2 = models.build_model("small_cnn", (32, 32, 3), weights=p)
    np.testing.assert_allclose(m2(x, training=False), m(x, training=False), rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="not found"):
        models.build_model("small_cnn", (32, 32, 3), weights=str(tmp_path / "missing.h5"))
    with pytest.raises(UserError, match="ImageNet"):
        models.build_model("small_cnn", (32, 32, 3), weights="imagenet")
    with pytest.raises(UserError, match="unknown"):
        models.build_model("vgg", (32, 32, 3))
    with pytest.raises(UserError, match="at least 32"):
        models.build_model("resnet50", (16, 16, 3))


def test_mobilenet_backbone_no_top_weights_path(tmp_path):
    """A backbone's own no-top weights file (as keras.applications stores it) is accepted as PATH."""
    bb = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3),
                                        pooling="avg", alpha=1.0)
    for v in bb.weights:
        v.assign(np.full(v.shape, 0.01, "float32") + (1.0 if "variance" in v.path else 0.0))
    p = str(tmp_path / "mnv2_notop.weights.h5")
    bb.save_weights(p)
    m = models.build_model("mobilenetv2", (32, 32, 3), weights=p, dropout=0.0)
    inner = [l for l in m.layers if isinstance(l, keras.Model)][0]
    for a, b in zip(inner.weights, bb.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("arch", ["resnet50", "densenet121", "efficientnetb0", "mobilenetv2"])
def test_backbones_build_and_run_at_32(arch):
    m = models.build_model(arch, (32, 32, 3), weights="none")
    out = m(_imgs(2), training=False)
    assert tuple(out.shape) == (2, 1) and np.all(np.isfinite(np.asarray(out)))
