"""The Inception-v3 feature extractor, with seeded random weights at the smallest input size (75 px).
Never downloads anything."""
import numpy as np
import pytest

from histaug_tf.common import UserError
from histaug_tf.metrics.inception import InceptionFeatures, get_inception

RES = 75


@pytest.fixture(scope="module")
def ext():
    return get_inception(None, seed=0, resolution=RES, batch_size=4)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(6, 32, 32, 3)).astype(np.uint8)


def test_matches_keras_inception_with_keras_preprocessing(ext, images):
    import keras
    import tensorflow as tf

    # Independent path: a separately built InceptionV3 with the same weights, Keras' own
    # preprocess_input on [0, 255] pixels resized bilinearly to the input size.
    ref_model = keras.applications.InceptionV3(include_top=False, pooling="avg", weights=None,
                                               input_shape=(RES, RES, 3))
    ref_model.set_weights(ext.model.get_weights())
    x = tf.image.resize(images.astype(np.float32), [RES, RES], method="bilinear").numpy()
    x = keras.applications.inception_v3.preprocess_input(x)
    ref = ref_model.predict(x, verbose=0)
    got = ext(images.astype(np.float32) / 127.5 - 1)
    assert got.shape == (6, 2048) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    # Random weights are not degenerate: features vary across images.
    assert got.std(0).mean() > 1e-3


def test_seeded_random_weights_batch_and_grey(ext, images):
    x = images.astype(np.float32) / 127.5 - 1
    same = InceptionFeatures(None, seed=0, resolution=RES, batch_size=3)
    other = InceptionFeatures(None, seed=1, resolution=RES, batch_size=4)
    a = ext(x)
    np.testing.assert_allclose(same(x), a, rtol=1e-5, atol=1e-6)  # same seed, other batching
    assert np.abs(other(x) - a).max() > 1e-2
    assert same.identity == ext.identity != other.identity
    np.testing.assert_allclose(ext(x[:1]), a[:1], rtol=1e-5, atol=1e-6)  # padded last batch
    grey = x[..., :1]
    np.testing.assert_allclose(ext(grey), ext(np.repeat(grey, 3, -1)), rtol=1e-6, atol=1e-7)
    assert ext(x[:0]).shape == (0, 2048)


def test_weights_file(ext, images, tmp_path):
    path = str(tmp_path / "inc.weights.h5")
    ext.model.save_weights(path)
    loaded = InceptionFeatures(path, resolution=RES, batch_size=4)
    x = images.astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(loaded(x), ext(x), rtol=1e-6, atol=1e-7)
    assert "sha256-" in loaded.identity
    with pytest.raises(UserError, match="not found"):
        InceptionFeatures(str(tmp_path / "missing.h5"), resolution=RES)
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not an h5 file")
    with pytest.raises(UserError, match="bad.weights.h5"):
        InceptionFeatures(str(bad), resolution=RES)
    with pytest.raises(UserError, match="75"):
        InceptionFeatures(None, resolution=32)
