"""Network snapshots (.keras): round trip, metadata, atomic write, latest; plain .keras models."""
import json
import os
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from histaug_tf.common import UserError
from histaug_tf.gan import snapshot as S
from histaug_tf.gan.networks import Discriminator, Generator
from histaug_tf.gan.presets import get_preset


def nets(c_dim):
    p = get_preset("tiny", 16, c_dim=c_dim, mixed_precision=False)
    return Generator(**p["G_kwargs"]), Generator(**p["G_kwargs"]), Discriminator(**p["D_kwargs"])


def randomise(model, seed):
    rng = np.random.default_rng(seed)
    for v in model.variables:  # incl. w_avg, noise buffers, zero-initialised biases
        v.assign(rng.standard_normal(v.shape).astype(np.float32) * 0.5)


@pytest.mark.parametrize("c_dim", [0, 2])
def test_keras_round_trip_gives_identical_outputs(tmp_path, c_dim):
    G, _, D = nets(c_dim)
    randomise(G, 1)
    randomise(D, 2)
    z = tf.constant(np.random.default_rng(3).standard_normal([4, 32]), tf.float32)
    c = tf.one_hot([0, 1, 0, 1], c_dim) if c_dim else None
    img = G(z, c, truncation_psi=0.6, noise_mode="const")
    logits = D(img, c)
    G.save(tmp_path / "g.keras")
    D.save(tmp_path / "d.keras")
    G2 = keras.saving.load_model(tmp_path / "g.keras")  # no project code at the call site
    D2 = keras.saving.load_model(tmp_path / "d.keras")
    assert type(G2) is Generator and type(D2) is Discriminator
    np.testing.assert_array_equal(G2(z, c, truncation_psi=0.6, noise_mode="const").numpy(), img.numpy())
    np.testing.assert_array_equal(D2(img, c).numpy(), logits.numpy())
    np.testing.assert_array_equal(G2.mapping.w_avg.numpy(), G.mapping.w_avg.numpy())
    assert (G2.num_ws, G2.c_dim, G2.img_resolution) == (G.num_ws, G.c_dim, G.img_resolution)


def test_snapshot_round_trip_and_metadata(tmp_path):
    G_ema, G, D = nets(2)
    for i, m in enumerate((G_ema, G, D)):
        randomise(m, 10 + i)
    meta = dict(kimg=12, preset="tiny", resolution=16, c_dim=2, label_names=["normal", "tumour"])
    path = S.save_snapshot(tmp_path / S.snapshot_name(12), G_ema, G=G, D=D, metadata=meta)
    assert os.path.basename(path) == "network-snapshot-000012.keras"
    assert os.listdir(tmp_path) == ["network-snapshot-000012.keras"]  # no temp file left
    assert S.read_metadata(path) == meta
    snap = S.load_snapshot(path)
    assert snap["metadata"] == meta
    z = tf.constant(np.random.default_rng(0).standard_normal([2, 32]), tf.float32)
    c = tf.one_hot([1, 0], 2)
    for key, ref in (("G_ema", G_ema), ("G", G)):
        np.testing.assert_array_equal(snap[key](z, c, noise_mode="const").numpy(),
                                      ref(z, c, noise_mode="const").numpy())
    img = G(z, c, noise_mode="const")
    np.testing.assert_array_equal(snap["D"](img, c).numpy(), D(img, c).numpy())
    # G_ema only
    p2 = S.save_snapshot(tmp_path / S.snapshot_name(40), G_ema, metadata=dict(kimg=40))
    s2 = S.load_snapshot(p2)
    assert s2["G"] is None and s2["D"] is None and s2["metadata"] == {"kimg": 40}
    assert S.latest_snapshot(tmp_path) == str(tmp_path / "network-snapshot-000040.keras")


def test_latest_snapshot_and_bad_files(tmp_path):
    assert S.latest_snapshot(tmp_path) is None
    for k in (5, 100, 20):
        (tmp_path / S.snapshot_name(k)).write_bytes(b"")
    (tmp_path / "network-snapshot-final.keras").write_bytes(b"")
    assert S.latest_snapshot(tmp_path).endswith("network-snapshot-000100.keras")
    with pytest.raises(UserError):
        S.load_snapshot(tmp_path / "missing.keras")
    with pytest.raises(UserError):
        S.load_snapshot(tmp_path / S.snapshot_name(5))  # empty file: not a zip
    other = tmp_path / "other.keras"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {}}))
    with pytest.raises(UserError):
        S.read_metadata(other)


def test_failed_save_leaves_nothing(tmp_path):
    G_ema, _, _ = nets(0)
    with pytest.raises(ValueError):
        S.save_snapshot(tmp_path / "x.keras", G_ema, metadata=dict(bad=object()))
    with pytest.raises(ValueError):
        S.save_snapshot(tmp_path / "x.h5", G_ema)
    assert os.listdir(tmp_path) == []


def test_snapshot_file_mode_follows_umask(tmp_path):
    import stat

    from histaug_tf.gan import networks, snapshot
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                           mapping_kwargs=dict(num_layers=1),
                           synthesis_kwargs=dict(channel_base=64, channel_max=8))
    old = os.umask(0o022)
    try:
        path = snapshot.save_snapshot(str(tmp_path / "s.keras"), G)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
