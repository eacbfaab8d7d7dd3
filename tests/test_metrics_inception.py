"""The FID Inception (pytorch-fid's inception-2015-12-05 variant) in Keras, against an independent
NumPy forward pass written here from the network's definition (direct convolutions, explicit
count_include_pad=False averaging, torch's bilinear resize), with random weights written to a
PyTorch zip state dict by a writer in this file (the layout torch.save produces). No torch."""
import os
import struct
import zipfile

import numpy as np
import pytest

from histaug_tf.common import UserError
from histaug_tf.metrics import inception as inc
from histaug_tf.torchfile.state_dict import load_state_dict

RES = 139  # the smallest-ish input whose last blocks are 3x3 (border != centre in the pools)


# ------------------------------------------------------------------------------------------------
# A torch.save zip writer: archive/data.pkl (pickle protocol 2, opcodes written by hand) + one raw
# little-endian storage file per tensor under archive/data/.
# ------------------------------------------------------------------------------------------------

def _u(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _i(n):
    return b"J" + struct.pack("<i", n)


def _tuple(items):
    return b"(" + b"".join(items) + b"t"


def _global(mod, name):
    return b"c" + f"{mod}\n{name}\n".encode()


STYPE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


def _state_pickle(tensors, views, legacy):
    """(data.pkl bytes, storages) of an OrderedDict state dict; ``tensors``: {name: array} each
    in its own storage; ``views``: {name: (storage_array, offset, size, stride)} for tensors that
    are strided views of a storage (torch keeps those)."""
    storages, body = [], b""
    entries = []
    for k, v in tensors.items():
        v = np.array(v, order="C")  # C order: strides are the row-major element strides
        entries.append((k, (v.reshape(-1), 0, v.shape, tuple(s // v.itemsize for s in v.strides))))
    entries += list(dict(views or {}).items())
    for name, (flat, offset, size, stride) in entries:
        key = str(next((i for i, s in enumerate(storages) if s is flat), len(storages)))
        if int(key) == len(storages):
            storages.append(flat)
        # Persistent id: ('storage', type, key, location, numel) (+ view metadata in legacy files).
        pid = _tuple([_u("storage"), _global("torch", STYPE[flat.dtype]), _u(key), _u("cpu"),
                      _i(flat.size)] + ([b"N"] if legacy else [])) + b"Q"
        hooks = _global("collections", "OrderedDict") + b")R"
        body += _u(name) + _global("torch._utils", "_rebuild_tensor_v2") + _tuple(
            [pid, _i(offset), _tuple([_i(s) for s in size]), _tuple([_i(s) for s in stride]),
             b"\x89", hooks]) + b"R" + b"s"
    meta = b"}" + _u("_metadata") + _global("collections", "OrderedDict") + b")R" + b"s" + b"b"
    return b"\x80\x02" + _global("collections", "OrderedDict") + b")R" + body + meta + b".", storages


def write_torch_zip(path, tensors, views=None):
    """The zip format: archive/data.pkl + one raw little-endian file per storage."""
    pkl, storages = _state_pickle(tensors, views, legacy=False)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        for i, s in enumerate(storages):
            z.writestr(f"archive/data/{i}", s.astype(s.dtype.newbyteorder("<")).tobytes())
        z.writestr("archive/version", "3\n")


def write_torch_legacy(path, tensors, views=None):
    """The legacy format: pickles of the magic number, protocol 1001, system info, the object and
    the storage keys, then each storage as int64 element count + raw little-endian bytes."""
    import pickle

    pkl, storages = _state_pickle(tensors, views, legacy=True)
    with open(path, "wb") as f:
        for head in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            f.write(pickle.dumps(head, protocol=2))
        f.write(pkl)
        f.write(pickle.dumps([str(i) for i in range(len(storages))], protocol=2))
        for s in storages:
            f.write(struct.pack("<q", s.size) + s.astype(s.dtype.newbyteorder("<")).tobytes())


def random_fid_state(seed):
    """Random weights with non-trivial BatchNorm statistics (small variances, so eps matters)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for k, shape in inc.expected_state_shapes().items():
        if k.endswith("conv.weight"):
            sd[k] = (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)
        elif k.endswith("running_var"):
            sd[k] = rng.uniform(0.002, 0.02, shape).astype(np.float32)
        elif k.endswith("bn.weight"):
            sd[k] = rng.uniform(0.03, 0.15, shape).astype(np.float32)
        else:  # bias (beta), running_mean
            sd[k] = rng.normal(0, 0.05, shape).astype(np.float32)
    sd["fc.weight"] = rng.normal(size=(1008, 2048)).astype(np.float32)
    sd["fc.bias"] = np.zeros(1008, np.float32)
    sd["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(7, np.int64)
    return sd


# ------------------------------------------------------------------------------------------------
# The independent NumPy forward pass (float64, NHWC activations, OIHW weights as in the file).
# ------------------------------------------------------------------------------------------------

def np_resize_bilinear(x, out):
    """torch F.interpolate(mode='bilinear', align_corners=False), no antialiasing: source index
    (dst + 0.5) * in/out - 0.5, clamped at 0; neighbours clamped at the far edge."""
    def axis(n_in):
        src = np.maximum((np.arange(out) + 0.5) * (n_in / out) - 0.5, 0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    h0, h1, fh = axis(x.shape[1])
    w0, w1, fw = axis(x.shape[2])
    rows = x[:, h0] * (1 - fh)[None, :, None, None] + x[:, h1] * fh[None, :, None, None]
    return rows[:, :, w0] * (1 - fw)[None, None, :, None] + rows[:, :, w1] * fw[None, None, :, None]


def np_conv(x, w, stride=1, pad=(0, 0)):
    o, i, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
    ho = (xp.shape[1] - kh) // stride + 1
    wo = (xp.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, o))
    for a in range(kh):
        for b in range(kw):
            patch = xp[:, a:a + stride * (ho - 1) + 1:stride, b:b + stride * (wo - 1) + 1:stride]
            out += np.einsum("nhwc,oc->nhwo", patch, w[:, :, a, b])
    return out


def np_max_pool(x, k=3, stride=2, pad=0):
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-np.inf)
    ho = (xp.shape[1] - k) // stride + 1
    wo = (xp.shape[2] - k) // stride + 1
    out = np.full((x.shape[0], ho, wo, x.shape[3]), -np.inf)
    for a in range(k):
        for b in range(k):
            out = np.maximum(out, xp[:, a:a + stride * (ho - 1) + 1:stride, b:b + stride * (wo - 1) + 1:stride])
    return out


def np_avg_pool_exclude_pad(x):
    """3x3, stride 1, padding 1, dividing by the number of real (unpadded) inputs in each window."""
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ones = np.pad(np.ones(x.shape[1:3]), 1)
    h, w = x.shape[1:3]
    total = sum(xp[:, a:a + h, b:b + w] for a in range(3) for b in range(3))
    count = sum(ones[a:a + h, b:b + w] for a in range(3) for b in range(3))
    return total / count[None, :, :, None]


class NumpyFID:
    def __init__(self, sd):
        self.sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}

    def c(self, name, x, stride=1, pad=(0, 0)):
        sd = self.sd
        y = np_conv(x, sd[f"{name}.conv.weight"], stride, pad)
        y = (y - sd[f"{name}.bn.running_mean"]) / np.sqrt(sd[f"{name}.bn.running_var"] + 0.001)
        return np.maximum(y * sd[f"{name}.bn.weight"] + sd[f"{name}.bn.bias"], 0)

    def a(self, n, x):
        c = self.c
        return np.concatenate([
            c(f"{n}.branch1x1", x),
            c(f"{n}.branch5x5_2", c(f"{n}.branch5x5_1", x), pad=(2, 2)),
            c(f"{n}.branch3x3dbl_3", c(f"{n}.branch3x3dbl_2", c(f"{n}.branch3x3dbl_1", x), pad=(1, 1)), pad=(1, 1)),
            c(f"{n}.branch_pool", np_avg_pool_exclude_pad(x))], -1)

    def b(self, n, x):
        c = self.c
        return np.concatenate([
            c(f"{n}.branch3x3", x, stride=2),
            c(f"{n}.branch3x3dbl_3", c(f"{n}.branch3x3dbl_2", c(f"{n}.branch3x3dbl_1", x), pad=(1, 1)), stride=2),
            np_max_pool(x)], -1)

    def cc(self, n, x):
        c = self.c
        b7 = c(f"{n}.branch7x7_3", c(f"{n}.branch7x7_2", c(f"{n}.branch7x7_1", x), pad=(0, 3)), pad=(3, 0))
        d = c(f"{n}.branch7x7dbl_1", x)
        d = c(f"{n}.branch7x7dbl_2", d, pad=(3, 0))
        d = c(f"{n}.branch7x7dbl_3", d, pad=(0, 3))
        d = c(f"{n}.branch7x7dbl_4", d, pad=(3, 0))
        d = c(f"{n}.branch7x7dbl_5", d, pad=(0, 3))
        return np.concatenate([c(f"{n}.branch1x1", x), b7, d,
                               c(f"{n}.branch_pool", np_avg_pool_exclude_pad(x))], -1)

    def d(self, n, x):
        c = self.c
        b3 = c(f"{n}.branch3x3_2", c(f"{n}.branch3x3_1", x), stride=2)
        b7 = c(f"{n}.branch7x7x3_1", x)
        b7 = c(f"{n}.branch7x7x3_2", b7, pad=(0, 3))
        b7 = c(f"{n}.branch7x7x3_3", b7, pad=(3, 0))
        b7 = c(f"{n}.branch7x7x3_4", b7, stride=2)
        return np.concatenate([b3, b7, np_max_pool(x)], -1)

    def e(self, n, x, pool):
        c = self.c
        t = c(f"{n}.branch3x3_1", x)
        b3 = np.concatenate([c(f"{n}.branch3x3_2a", t, pad=(0, 1)), c(f"{n}.branch3x3_2b", t, pad=(1, 0))], -1)
        t = c(f"{n}.branch3x3dbl_2", c(f"{n}.branch3x3dbl_1", x), pad=(1, 1))
        bd = np.concatenate([c(f"{n}.branch3x3dbl_3a", t, pad=(0, 1)), c(f"{n}.branch3x3dbl_3b", t, pad=(1, 0))], -1)
        return np.concatenate([c(f"{n}.branch1x1", x), b3, bd, c(f"{n}.branch_pool", pool(x))], -1)

    def __call__(self, u8, res):
        x = np_resize_bilinear(u8.astype(np.float64) / 255.0, res) * 2 - 1
        x = self.c("Conv2d_1a_3x3", x, stride=2)
        x = self.c("Conv2d_2a_3x3", x)
        x = self.c("Conv2d_2b_3x3", x, pad=(1, 1))
        x = np_max_pool(x)
        x = self.c("Conv2d_3b_1x1", x)
        x = self.c("Conv2d_4a_3x3", x)
        x = np_max_pool(x)
        for n in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
            x = self.a(n, x)
        x = self.b("Mixed_6a", x)
        for n in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            x = self.cc(n, x)
        x = self.d("Mixed_7a", x)
        assert x.shape[1:3] == (3, 3)  # pools see borders and a centre
        x = self.e("Mixed_7b", x, np_avg_pool_exclude_pad)
        x = self.e("Mixed_7c", x, lambda t: np_max_pool(t, 3, 1, 1))
        return x.mean((1, 2))


@pytest.fixture(scope="module")
def fid_file(tmp_path_factory):
    sd = random_fid_state(1)
    path = str(tmp_path_factory.mktemp("fidw") / "pt_inception-test.pth")
    write_torch_zip(path, sd)
    return path, sd


@pytest.fixture(scope="module")
def fid_net(fid_file):
    # The real file is refused at other sizes; a loaded state dict (as from that file) is not.
    return inc.FIDInception(load_state_dict(fid_file[0]), resolution=RES, batch_size=2)


@pytest.mark.parametrize("writer", [write_torch_zip, write_torch_legacy])
def test_torch_reader_roundtrip(tmp_path, writer):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 4, 2)).astype(np.float32)
    storage = rng.normal(size=20).astype(np.float32)
    path = str(tmp_path / "sd.pth")
    # 'tr' is a transposed (strided) view at an offset of the same storage as 'row'.
    writer(path, {"a": a, "n": np.array(5, np.int64)},
           views={"row": (storage, 2, (6,), (1,)), "tr": (storage, 3, (4, 3), (1, 4))})
    sd = load_state_dict(path)
    assert set(sd) == {"a", "n", "row", "tr"}
    np.testing.assert_array_equal(sd["a"], a)
    assert sd["n"].dtype == np.int64 and int(sd["n"]) == 5
    np.testing.assert_array_equal(sd["row"], storage[2:8])
    np.testing.assert_array_equal(sd["tr"], storage[3:15].reshape(3, 4).T)


def test_torch_reader_refuses_code_and_garbage(tmp_path):
    marker = tmp_path / "executed"
    evil = (b"\x80\x02" + _global("os", "system") + _tuple([_u(f"touch {marker}")]) + b"R.")
    path = str(tmp_path / "evil.pth")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", evil)
    with pytest.raises(UserError, match=r"evil.pth: not a PyTorch state dict: refusing to load global os.system"):
        load_state_dict(path)
    assert not marker.exists()
    (tmp_path / "junk.pth").write_bytes(b"hello")
    with pytest.raises(UserError, match="junk.pth: not a PyTorch state dict"):
        load_state_dict(str(tmp_path / "junk.pth"))
    write_torch_zip(str(tmp_path / "small.pth"), {"x": np.zeros(3, np.float32)})
    with pytest.raises(UserError, match="small.pth: not the FID Inception weights: .* missing"):
        inc.FIDInception(str(tmp_path / "small.pth"))


def test_keras_fid_inception_matches_numpy_forward(fid_file, fid_net):
    _, sd = fid_file
    ref_net = NumpyFID(sd)
    rng = np.random.default_rng(2)
    worst = 0.0
    # Upsampled (20 px) and downsampled (170 px) inputs: both resize directions.
    for size in (20, 170):
        u8 = rng.integers(0, 256, size=(1, size, size, 3), dtype=np.uint8)
        got = fid_net.features_uint8(u8)
        ref = ref_net(u8, RES)
        assert got.shape == (1, 2048) and got.dtype == np.float64
        rel = np.abs(got - ref).max() / np.abs(ref).max()
        worst = max(worst, rel)
        assert ref.std() > 1e-3 * np.abs(ref).max()  # not degenerate
    print(f"max relative difference Keras vs NumPy: {worst:.2e}")
    assert worst < 1e-5  # float32 Keras vs float64 NumPy; measured 1.2e-6


def test_fid_features_at_299_and_refusals(fid_file, tmp_path):
    path, _ = fid_file
    rng = np.random.default_rng(3)
    u8 = rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    f = inc.fid_features(u8, path, batch_size=2)
    assert f.shape == (3, 2048) and f.dtype == np.float64
    net = inc.get_inception(path, batch_size=2)
    assert net.name_suffix == "" and net.resolution == 299
    # Same images, resized and scaled by the NumPy path, straight into the Keras model.
    x = (np_resize_bilinear(u8 / 255.0, 299) * 2 - 1).astype(np.float32)
    np.testing.assert_allclose(f, net.model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="the FID Inception is defined at 299"):
        inc.FIDInception(path, resolution=RES)
    with pytest.raises(UserError, match="--inception_weights is required"):
        inc.get_inception(None)
    with pytest.raises(UserError, match="nope.pth: Inception weights file not found"):
        inc.get_inception(str(tmp_path / "nope.pth"))
    with pytest.raises(UserError, match="renamed keras_imagenet"):
        inc.get_inception("imagenet")


def test_random_weights_are_seeded_and_suffixed():
    a = inc.FIDInception("random", seed=0, resolution=75, batch_size=3)
    b = inc.FIDInception("random", seed=1, resolution=75, batch_size=4)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    fa = a(x)
    assert a.name_suffix == "_random" and "random-seed0" in a.identity != b.identity
    assert np.abs(b(x) - fa).max() > 1e-2
    np.testing.assert_allclose(a(x[:1]), fa[:1], rtol=1e-5, atol=1e-6)  # padded last batch
    grey = x[..., :1]
    np.testing.assert_allclose(a(grey), a(np.repeat(grey, 3, -1)), rtol=1e-6, atol=1e-7)
    assert a(x[:0]).shape == (0, 2048)


def test_keras_imagenet_inception_is_suffixed():
    """--inception_weights=keras_imagenet: Keras' InceptionV3 (here with Keras' own random init,
    no download) with Keras' preprocessing, under names suffixed _kerasinc."""
    import keras
    import tensorflow as tf

    ext = inc.KerasInceptionV3(None, resolution=75, batch_size=4)
    assert ext.name_suffix == "_kerasinc" and ext.dim == 2048
    u8 = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3)).astype(np.uint8)
    ref_model = keras.applications.InceptionV3(include_top=False, pooling="avg", weights=None,
                                               input_shape=(75, 75, 3))
    ref_model.set_weights(ext.model.get_weights())
    x = tf.image.resize(u8.astype(np.float32), [75, 75], method="bilinear").numpy()
    ref = ref_model.predict(keras.applications.inception_v3.preprocess_input(x), verbose=0)
    np.testing.assert_allclose(ext(u8.astype(np.float32) / 127.5 - 1), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="--inception_resolution: only with --inception_weights=random"):
        inc.get_inception("keras_imagenet", resolution=75)
