"""VGG16 fc2 features for precision/recall, against a NumPy forward pass written here, with random
weights saved to a Keras weights file by the test (no download)."""
import numpy as np
import pytest

from histaug_tf.common import UserError


def np_resize_bilinear(x, out):
    """Half-pixel-centre bilinear resize (no antialiasing), source index clamped at 0."""
    def axis(n_in):
        src = np.maximum((np.arange(out) + 0.5) * (n_in / out) - 0.5, 0)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    h0, h1, fh = axis(x.shape[1])
    w0, w1, fw = axis(x.shape[2])
    rows = x[:, h0] * (1 - fh)[None, :, None, None] + x[:, h1] * fh[None, :, None, None]
    return rows[:, :, w0] * (1 - fw)[None, None, :, None] + rows[:, :, w1] * fw[None, None, :, None]


def np_vgg16_fc2(u8, w):
    """VGG16 (Simonyan & Zisserman config D): 3x3 'same' convs + ReLU, 2x2 max pools after blocks of
    2, 2, 3, 3, 3 convs, flatten (H, W, C order), fc1 + ReLU, fc2 + ReLU. Caffe-style input:
    [0, 255] BGR minus the ImageNet means."""
    x = np_resize_bilinear(u8.astype(np.float64), 224)[..., ::-1] - np.array([103.939, 116.779, 123.68])
    for block, n in enumerate((2, 2, 3, 3, 3), 1):
        for i in range(1, n + 1):
            k, b = w[f"block{block}_conv{i}"]
            xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            h, wd = x.shape[1:3]
            y = sum(np.tensordot(xp[:, a:a + h, c:c + wd], k[a, c], axes=([3], [0]))
                    for a in range(3) for c in range(3))
            x = np.maximum(y + b, 0)
        n_, h, wd, ch = x.shape
        x = x.reshape(n_, h // 2, 2, wd // 2, 2, ch).max(axis=(2, 4))
    x = x.reshape(x.shape[0], -1)
    x = np.maximum(x @ w["fc1"][0] + w["fc1"][1], 0)
    return np.maximum(x @ w["fc2"][0] + w["fc2"][1], 0)


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    import keras

    model = keras.applications.VGG16(include_top=True, weights=None)
    rng = np.random.default_rng(0)
    weights = {}
    for layer in model.layers:
        if not layer.get_weights():
            continue
        k, b = layer.get_weights()
        fan_in = int(np.prod(k.shape[:-1]))
        k = (rng.standard_normal(k.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = rng.normal(0, 0.1, b.shape).astype(np.float32)
        layer.set_weights([k, b])
        weights[layer.name] = (k.astype(np.float64), b.astype(np.float64))
    path = str(tmp_path_factory.mktemp("vgg") / "vgg16.weights.h5")
    model.save_weights(path)
    return path, weights


def test_vgg16_fc2_matches_numpy(vgg_file):
    from histaug_tf.metrics.vgg import VGG16Features

    path, weights = vgg_file
    ext = VGG16Features(path, batch_size=2)
    u8 = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    got = ext(u8.astype(np.float32) / 127.5 - 1)
    ref = np_vgg16_fc2(u8, weights)
    assert got.shape == (2, 4096) and ext.dim == 4096 and ext.name_suffix == ""
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    print(f"max relative difference Keras vs NumPy VGG16 fc2: {rel:.2e}")
    assert rel < 1e-5
    assert (ref > 0).mean() > 0.2 and np.abs(ref[0] - ref[1]).max() > 1e-3 * np.abs(ref).max()


def test_vgg16_weights_refused_one_line(vgg_file, tmp_path):
    import keras

    from histaug_tf.metrics.vgg import VGG16Features

    from histaug_tf.metrics.vgg import resolve_vgg16_weights

    with pytest.raises(UserError, match="needs --vgg16_weights=PATH .*or ask for pr50k3_inc"):
        resolve_vgg16_weights(None, "pr50k3_full")
    with pytest.raises(UserError, match="nope.h5: VGG16 weights file not found"):
        VGG16Features(str(tmp_path / "nope.h5"))
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="junk.h5: not an HDF5 Keras weights file"):
        VGG16Features(str(tmp_path / "junk.h5"))
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    other.save_weights(str(tmp_path / "other.weights.h5"))
    with pytest.raises(UserError) as e:
        VGG16Features(str(tmp_path / "other.weights.h5"))
    msg = str(e.value)
    assert "other.weights.h5: not Keras VGG16" in msg and "\n" not in msg
    # A VGG16 without the fc layers (include_top=False weights) would leave fc1/fc2 random.
    notop = keras.applications.VGG16(include_top=False, weights=None)
    notop.save_weights(str(tmp_path / "notop.weights.h5"))
    with pytest.raises(UserError, match=r"notop.weights.h5: not Keras VGG16 \(include_top=True\) weights"):
        VGG16Features(str(tmp_path / "notop.weights.h5"))
