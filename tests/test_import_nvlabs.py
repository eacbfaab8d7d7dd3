"""Importing NVlabs-structure pickles into our Keras networks, checked against a NumPy forward pass.

The pickles are written by our own code (tests/test_import_fixtures.py) with the globals and
structure of NVlabs' formats; the reference is the NumPy StyleGAN2-ADA G/D in that file (which was
checked against NVlabs stylegan2-ada-pytorch itself outside the repository, max |diff| ~1e-6).
"""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from histaug_tf.common import UserError

import test_import_fixtures as fx

RES, Z, W, NMAP, BASE, CMAX = 16, 6, 8, 2, 128, 16


def _make(tmp_path, c_dim, seed=0, fmt="pytorch", d_mapping_lrmul=None):
    rng = np.random.default_rng(seed)
    G = fx.random_weights(fx.pt_param_shapes_G(Z, c_dim, W, RES, 3, NMAP, BASE, CMAX), rng)
    G_ema = fx.random_weights(fx.pt_param_shapes_G(Z, c_dim, W, RES, 3, NMAP, BASE, CMAX), rng)
    D = fx.random_weights(fx.pt_param_shapes_D(c_dim, RES, 3, BASE, CMAX, CMAX if c_dim else 0,
                                               1 if c_dim else 0), rng)
    pkl = tmp_path / f"network-snapshot-000123-{fmt}-{c_dim}.pkl"
    if fmt == "pytorch":
        gk = dict(z_dim=Z, c_dim=c_dim, w_dim=W, img_resolution=RES, img_channels=3,
                  mapping_kwargs=dict(num_layers=NMAP),
                  synthesis_kwargs=dict(channel_base=BASE, channel_max=CMAX, num_fp16_res=0,
                                        conv_clamp=None, architecture="skip"))
        dk = dict(c_dim=c_dim, img_resolution=RES, img_channels=3, channel_base=BASE,
                  channel_max=CMAX, architecture="resnet", mapping_kwargs=dict(num_layers=1),
                  epilogue_kwargs=dict(mbstd_group_size=4))
        fx.write_pytorch_pkl(pkl, G, gk, D, dk, G_ema_sd=G_ema)
    else:
        fx.write_tf1_pkl(pkl, G, G_ema, D, z_dim=Z, c_dim=c_dim, w_dim=W, img_resolution=RES,
                         img_channels=3, num_map=NMAP, fmap_base=BASE // 2, fmap_max=CMAX,
                         mbstd_group_size=4, d_mapping_fmaps=CMAX, d_num_map=1 if c_dim else 0,
                         d_mapping_lrmul=d_mapping_lrmul)
    return pkl, G, G_ema, D


def _inputs(c_dim, n=4, seed=1):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, Z)).astype(np.float32)
    c = np.eye(c_dim, dtype=np.float32)[rng.integers(0, c_dim, n)] if c_dim else None
    return z, c


@pytest.mark.parametrize("c_dim", [0, 3])
def test_imported_pytorch_pickle_matches_numpy_reference(tmp_path, c_dim):
    from histaug_tf.interop.nvlabs import load_network_pkl

    pkl, G, G_ema, D = _make(tmp_path, c_dim)
    nets = load_network_pkl(pkl)
    z, c = _inputs(c_dim)
    for psi, cutoff in ((1.0, None), (0.7, None), (0.5, 2)):
        img = np.asarray(nets["G_ema"](z, c, truncation_psi=psi, truncation_cutoff=cutoff,
                                       noise_mode="const"))
        ref = fx.np_generator(G_ema, z.astype(np.float64), c, RES, NMAP, psi=psi, cutoff=cutoff)
        assert img.shape == (4, RES, RES, 3)
        np.testing.assert_allclose(img, ref.transpose(0, 2, 3, 1), atol=1e-4, rtol=0)
    # G (not the EMA) got its own weights
    img = np.asarray(nets["G"](z, c, truncation_psi=1, noise_mode="const"))
    ref = fx.np_generator(G, z.astype(np.float64), c, RES, NMAP)
    np.testing.assert_allclose(img, ref.transpose(0, 2, 3, 1), atol=1e-4, rtol=0)
    # D logits on the reference images
    x = ref.astype(np.float32)
    logits = np.asarray(nets["D"](x.transpose(0, 2, 3, 1), c))
    ref_logits = fx.np_discriminator(D, x.astype(np.float64), c, RES, 1 if c_dim else 0)
    assert logits.shape == (4, 1)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=1e-4)
    md = nets["metadata"]
    assert md["kimg"] == 123 and md["c_dim"] == c_dim and md["resolution"] == RES
    assert md["source_format"] == "nvlabs-pytorch" and md["augment_p"] == pytest.approx(0.25)


def test_tf1_and_pytorch_pickles_of_same_weights_give_same_networks(tmp_path):
    from histaug_tf.interop.nvlabs import load_network_pkl

    c_dim = 3
    pt, G, G_ema, D = _make(tmp_path, c_dim, seed=4, fmt="pytorch")
    # TF1's D label mapping defaults to lr multiplier 0.1 (PyTorch: 0.01); state it to compare
    tf1, *_ = _make(tmp_path, c_dim, seed=4, fmt="tf1", d_mapping_lrmul=0.01)
    a, b = load_network_pkl(pt), load_network_pkl(tf1)
    assert b["metadata"]["source_format"] == "nvlabs-tf1"
    z, c = _inputs(c_dim, seed=7)
    ia = np.asarray(a["G_ema"](z, c, truncation_psi=0.6, noise_mode="const"))
    ib = np.asarray(b["G_ema"](z, c, truncation_psi=0.6, noise_mode="const"))
    np.testing.assert_allclose(ia, ib, atol=1e-5, rtol=0)
    ref = fx.np_generator(G_ema, z.astype(np.float64), c, RES, NMAP, psi=0.6)
    np.testing.assert_allclose(ib, ref.transpose(0, 2, 3, 1), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(a["D"](ia, c)), np.asarray(b["D"](ia, c)), atol=1e-5)
    # with the TF1 default (0.1) the D is a different function, which we follow
    tf1_default = tmp_path / "tf1_default"
    tf1_default.mkdir()
    pkl, *_ = _make(tf1_default, c_dim, seed=4, fmt="tf1")
    d = load_network_pkl(pkl)["D"]
    ref_d = fx.np_discriminator(D, ia.transpose(0, 3, 1, 2).astype(np.float64), c, RES, 1,
                                map_lr=0.1)
    np.testing.assert_allclose(np.asarray(d(ia, c)), ref_d, atol=1e-4, rtol=1e-4)
    # per-variable equality between the two imports
    for key in ("G", "G_ema", "D"):
        va = {v.path: v.numpy() for v in a[key].variables}
        vb = {v.path.replace(b[key].name, a[key].name, 1): v.numpy() for v in b[key].variables}
        assert va.keys() == vb.keys()
        for p in va:  # (TF1 stores mod_bias - 1: float32 rounding of the +1 only)
            np.testing.assert_allclose(va[p], vb[p], rtol=0, atol=1e-7, err_msg=p)


@pytest.mark.slow  # a subprocess importing TF, a .keras save and load
def test_import_cli_writes_loadable_snapshot(tmp_path):
    pkl, G, G_ema, D = _make(tmp_path, 0, seed=2)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    cmd = [sys.executable, "-m", "histaug_tf.import_nvlabs", f"--src={pkl}", f"--out={out}"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    snap = out / (pkl.name[:-4] + ".keras")
    assert snap.is_file() and r.stdout.strip().endswith(snap.name)
    with zipfile.ZipFile(snap) as zf:  # a real Keras archive
        assert "config.json" in zf.namelist()

    from histaug_tf.gan.snapshot import load_snapshot

    s = load_snapshot(str(snap))
    z, _ = _inputs(0)
    img = np.asarray(s["G_ema"](z, None, truncation_psi=0.8, noise_mode="const"))
    ref = fx.np_generator(G_ema, z.astype(np.float64), None, RES, NMAP, psi=0.8)
    np.testing.assert_allclose(img, ref.transpose(0, 2, 3, 1), atol=1e-4, rtol=0)
    assert s["D"] is not None and s["G"] is not None
    # train_gan --resume copies variables by path into networks it builds with default names
    from histaug_tf.gan.networks import Generator

    fresh = Generator(**s["G_ema"].get_config())
    assert {v.path for v in fresh.variables} == {v.path for v in s["G_ema"].variables} \
        == {v.path for v in s["G"].variables}
    assert s["metadata"]["source_format"] == "nvlabs-pytorch"
    json.dumps(s["metadata"])

    # second run without --overwrite: one-line error, exit 1, snapshot untouched
    mtime = snap.stat().st_mtime_ns
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "exists" in r.stderr and snap.stat().st_mtime_ns == mtime


def test_import_cli_refuses_malicious_pickle_without_output(tmp_path):
    marker = tmp_path / "pwned"
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(fx.dumps(fx.Reduce(fx.GlobalRef("os", "system"), (f"touch {marker}",)),
                             protocol=2))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    r = subprocess.run([sys.executable, "-m", "histaug_tf.import_nvlabs", f"--src={pkl}",
                        f"--out={out}"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {pkl}: refusing to load global 'os.system'")
    assert not marker.exists() and not out.exists()


def test_mismatched_weights_are_refused(tmp_path):
    from histaug_tf.interop.nvlabs import load_network_pkl

    rng = np.random.default_rng(0)
    G = fx.random_weights(fx.pt_param_shapes_G(Z, 0, W, RES, 3, NMAP, BASE, CMAX), rng)
    D = fx.random_weights(fx.pt_param_shapes_D(0, RES, 3, BASE, CMAX, 0, 0), rng)
    gk = dict(z_dim=Z, c_dim=0, w_dim=W, img_resolution=RES, img_channels=3,
              mapping_kwargs=dict(num_layers=NMAP),
              synthesis_kwargs=dict(channel_base=BASE, channel_max=CMAX))
    dk = dict(c_dim=0, img_resolution=RES, img_channels=3, channel_base=BASE, channel_max=CMAX)
    bad = dict(G)
    bad["mapping.fc0.weight"] = bad["mapping.fc0.weight"][:, :-1]   # wrong shape
    pkl = tmp_path / "bad.pkl"
    fx.write_pytorch_pkl(pkl, bad, gk, D, dk)
    with pytest.raises(UserError, match="mapping.fc0.weight"):
        load_network_pkl(pkl)
    missing = {k: v for k, v in G.items() if k != "synthesis.b8.conv1.bias"}
    fx.write_pytorch_pkl(pkl, missing, gk, D, dk)
    with pytest.raises(UserError, match="missing.*synthesis.b8.conv1.bias"):
        load_network_pkl(pkl)
