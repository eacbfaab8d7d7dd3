"""Parsing NVlabs pickles (PyTorch and TF1 structure) into the neutral PyTorch-layout structure."""
import io
import pickle
import struct
import zipfile

import numpy as np
import pytest

from histaug_tf.common import UserError
from histaug_tf.torchfile import safe_pickle
from histaug_tf.interop.nvlabs_format import read_network_pkl

import test_import_fixtures as fx

CFG = dict(z_dim=6, c_dim=3, w_dim=8, img_resolution=16, img_channels=3, num_map=2,
           channel_base=128, channel_max=16)


def _weights(seed=0, c_dim=3):
    rng = np.random.default_rng(seed)
    G = fx.random_weights(fx.pt_param_shapes_G(6, c_dim, 8, 16, 3, 2, 128, 16), rng)
    G_ema = fx.random_weights(fx.pt_param_shapes_G(6, c_dim, 8, 16, 3, 2, 128, 16), rng)
    D = fx.random_weights(fx.pt_param_shapes_D(c_dim, 16, 3, 128, 16, 16 if c_dim else 0,
                                               1 if c_dim else 0), rng)
    return G, G_ema, D


def _kwargs(c_dim=3):
    gk = dict(z_dim=6, c_dim=c_dim, w_dim=8, img_resolution=16, img_channels=3,
              mapping_kwargs=dict(num_layers=2),
              synthesis_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=0,
                                    conv_clamp=None, architecture="skip"))
    dk = dict(c_dim=c_dim, img_resolution=16, img_channels=3, channel_base=128, channel_max=16,
              architecture="resnet", mapping_kwargs=dict(num_layers=1),
              epilogue_kwargs=dict(mbstd_group_size=4))
    return gk, dk


@pytest.mark.parametrize("c_dim", [0, 3])
def test_pytorch_structure_roundtrip(tmp_path, c_dim):
    G, G_ema, D = _weights(c_dim=c_dim)
    gk, dk = _kwargs(c_dim)
    pkl = tmp_path / "net.pkl"
    fx.write_pytorch_pkl(pkl, G, gk, D, dk, G_ema_sd=G_ema)
    data = read_network_pkl(pkl)
    assert data["format"] == "pytorch"
    for key, ref in (("G", G), ("G_ema", G_ema), ("D", D)):
        got = data[key].params
        assert set(got) == set(ref), key
        for name in ref:
            assert got[name].shape == ref[name].shape, (key, name)
            np.testing.assert_array_equal(got[name], ref[name], err_msg=f"{key} {name}")
    kw = data["G"].kwargs
    assert (kw["z_dim"], kw["c_dim"], kw["w_dim"], kw["img_resolution"]) == (6, c_dim, 8, 16)
    assert kw["mapping_kwargs"]["num_layers"] == 2
    assert kw["mapping_kwargs"]["lr_multiplier"] == 0.01       # default filled in
    assert kw["synthesis_kwargs"]["channel_base"] == 128
    assert data["D"].kwargs["epilogue_kwargs"]["mbstd_group_size"] == 4
    assert data["augment_p"] == pytest.approx(0.25)
    assert data["training_set_kwargs"]["resolution"] == 16


def test_tf1_structure_gives_same_pytorch_layout_weights(tmp_path):
    G, G_ema, D = _weights()
    pkl = tmp_path / "tf1.pkl"
    fx.write_tf1_pkl(pkl, G, G_ema, D, z_dim=6, c_dim=3, w_dim=8, img_resolution=16,
                     img_channels=3, num_map=2, fmap_base=64, fmap_max=16, mbstd_group_size=4,
                     d_mapping_fmaps=16, d_num_map=1)
    data = read_network_pkl(pkl)
    assert data["format"] == "tf1"
    for key, ref in (("G", G), ("G_ema", G_ema), ("D", D)):
        got = data[key].params
        assert set(got) == set(ref), (key, set(got) ^ set(ref))
        for name in ref:
            assert got[name].shape == ref[name].shape, (key, name)
            np.testing.assert_allclose(got[name], ref[name], rtol=0, atol=1e-6,
                                       err_msg=f"{key} {name}")
    gk = data["G_ema"].kwargs
    assert gk["synthesis_kwargs"]["channel_base"] == 128   # TF fmap_base * 2
    assert gk["mapping_kwargs"]["num_layers"] == 2
    dk = data["D"].kwargs
    assert dk["channel_base"] == 128 and dk["cmap_dim"] == 16
    assert dk["mapping_kwargs"]["lr_multiplier"] == 0.1    # TF1 D default
    assert dk["mapping_kwargs"]["num_layers"] == 1


def test_rebuild_tensor_strides_offsets_bfloat16():
    data = np.arange(20, dtype=np.float32)
    st = safe_pickle._Storage(data, False)
    got = safe_pickle._rebuild_tensor_v2(st, 2, (3, 4), (1, 5))
    ref = np.array([[data[2 + i + 5 * j] for j in range(4)] for i in range(3)])
    np.testing.assert_array_equal(got, ref)
    with pytest.raises(safe_pickle.UnsafePickleError, match="beyond"):
        safe_pickle._rebuild_tensor_v2(st, 10, (3, 4), (1, 5))
    with pytest.raises(safe_pickle.UnsafePickleError, match="more elements"):
        safe_pickle._rebuild_tensor_v2(st, 0, (10 ** 6, 10 ** 6), (0, 0))   # no 4 TB expansion
    vals = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    bits = (vals.view(np.uint32) >> 16).astype(np.uint16)
    got = safe_pickle._rebuild_tensor_v2(safe_pickle._Storage(bits, True), 0, (3,), (1,))
    np.testing.assert_array_equal(got, vals)


def test_torch_legacy_stream_layout():
    arr = np.linspace(-1, 1, 7, dtype=np.float32)
    st = safe_pickle._load_storage_from_bytes(fx.torch_storage_bytes(arr))
    np.testing.assert_array_equal(st.data, arr)
    # truncated raw data is refused
    with pytest.raises(safe_pickle.UnsafePickleError, match="truncated"):
        safe_pickle._load_storage_from_bytes(fx.torch_storage_bytes(arr)[:-4])


def test_torch_zip_stream():
    arr = np.arange(6, dtype=np.float32) * 0.5
    marker = object()
    pid = ("storage", fx.GlobalRef("torch", "FloatStorage"), "0", "cpu", 6)
    data_pkl = fx.dumps(marker, protocol=2, persistent=lambda o: pid if o is marker else None)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/data/0", arr.tobytes())
    st = safe_pickle._load_storage_from_bytes(buf.getvalue())
    np.testing.assert_array_equal(st.data, arr)


def test_not_a_network_pickle(tmp_path):
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UserError, match="missing"):
        read_network_pkl(p)
    p.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(UserError, match="not a StyleGAN2-ADA network pickle"):
        read_network_pkl(p)


_ = struct
