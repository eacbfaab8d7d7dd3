"""python -m histaug_tf.generate: datasets of synthetic patches from tiny snapshots, read back through
the pipeline; reproducibility; bad input gives one-line errors and no manifest."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from histaug_tf.common import UserError
from histaug_tf.data.pipeline import make_dataset
from histaug_tf.apps import generate as generate_lib
from histaug_tf.gan.networks import Generator
from histaug_tf.gan.presets import get_preset
from histaug_tf.gan.snapshot import save_snapshot, snapshot_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RES = 16


def tiny_G(c_dim, seed):
    import keras

    keras.utils.set_random_seed(seed)
    return Generator(**get_preset("tiny", RES, c_dim=c_dim, mixed_precision=False)["G_kwargs"])


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    Gc = tiny_G(2, 0)
    # A run directory with two snapshots: the directory means the latest (kimg 4).
    save_snapshot(str(root / "cond-run" / snapshot_name(0)), tiny_G(2, 9),
                  metadata={"label_names": ["normal", "tumour"]})
    save_snapshot(str(root / "cond-run" / snapshot_name(4)), Gc,
                  metadata={"label_names": ["normal", "tumour"], "kimg": 4})
    G0, G1 = tiny_G(0, 1), tiny_G(0, 2)
    p0 = save_snapshot(str(root / "u0" / snapshot_name(2)), G0)
    p1 = save_snapshot(str(root / "u1" / snapshot_name(2)), G1)
    return dict(root=root, run=str(root / "cond-run"), Gc=Gc, G0=G0, G1=G1, p0=p0, p1=p1)


def expected_images(G, seeds, label):
    """Independent of the Synthesizer: eager call per image, NVlabs z and uint8 conversion."""
    out = []
    for s in seeds:
        z = np.random.RandomState(s).randn(1, G.z_dim).astype(np.float32)
        c = np.zeros([1, G.c_dim], np.float32)
        if G.c_dim:
            c[0, label] = 1
        img = np.asarray(G(z, c, truncation_psi=0.7, noise_mode="const"))[0]
        out.append(np.clip(np.floor(img * 127.5 + 128), 0, 255).astype(np.uint8))
    return np.stack(out)


def read_back(d):
    ds = make_dataset(d, "train", pixel_range=None, with_meta=True)
    rows = [{k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in ex.items()} for ex in ds]
    return rows


def test_conditional_network_dataset_reads_back(nets, tmp_path):
    out = str(tmp_path / "syn")
    res = generate_lib.generate_dataset(out, network=nets["run"], num_per_class=5, seed=10,
                                        truncation_psi=0.7, batch_size=4, grid=True,
                                        progress=False, flags={"seed": 10})
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert m["image_shape"] == [RES, RES, 3] and m["label_names"] == ["normal", "tumour"]
    assert m["splits"]["train"]["num_examples"] == 10
    assert m["splits"]["train"]["class_counts"] == [5, 5]
    prov = m["provenance"]
    assert prov["snapshots"]["all"]["path"].endswith("cond-run/network-snapshot-000004.keras")
    assert len(prov["snapshots"]["all"]["sha256"]) == 64
    assert prov["flags"] == {"seed": 10} and prov["truncation_psi"] == 0.7
    rows = read_back(out)
    assert len(rows) == 10
    by_key = {r["key"].decode(): r for r in rows}
    expect_keys = {f"synthetic/cond-run/{n}/{s}" for n in ("normal", "tumour") for s in range(10, 15)}
    assert set(by_key) == expect_keys
    for r in rows:
        assert r["source"] == b"synthetic" and r["group"] == b"cond-run"
        assert r["image"].shape == (RES, RES, 3) and r["image"].dtype == np.uint8
    for c, name in enumerate(["normal", "tumour"]):
        exp = expected_images(nets["Gc"], range(10, 15), c)
        got = np.stack([by_key[f"synthetic/cond-run/{name}/{s}"]["image"] for s in range(10, 15)])
        assert all(by_key[f"synthetic/cond-run/{name}/{s}"]["label"] == c for s in range(10, 15))
        # Batched tf.function vs eager per image: equal up to one grey level of round-off.
        assert np.abs(got.astype(int) - exp.astype(int)).max() <= 1
        assert (got == exp).mean() > 0.99
        assert got.std() > 1  # not a constant image
        grid = np.asarray(Image.open(os.path.join(out, f"grid-{name}.png")))
        assert grid.shape == (2 * RES, 3 * RES, 3)  # 5 images: 3 columns, 2 rows
        np.testing.assert_array_equal(grid[:RES, RES:2 * RES], got[1])
    assert sorted(res["grids"]) == sorted(os.path.join(out, f"grid-{n}.png")
                                          for n in ("normal", "tumour"))


def test_same_seeds_identical_bytes_and_per_class_networks(nets, tmp_path):
    kw = dict(networks=f"0:{nets['p0']},1:{nets['p1']}", num_per_class=3, seed=5,
              truncation_psi=0.7, progress=False)
    a = generate_lib.generate_dataset(str(tmp_path / "a"), batch_size=2, **kw)["manifest"]
    b = generate_lib.generate_dataset(str(tmp_path / "b"), batch_size=2, **kw)["manifest"]
    sha = [s["sha256"] for s in a["splits"]["train"]["shards"]]
    assert sha == [s["sha256"] for s in b["splits"]["train"]["shards"]]
    for s in a["splits"]["train"]["shards"]:
        assert open(tmp_path / "a" / s["file"], "rb").read() == open(tmp_path / "b" / s["file"], "rb").read()
    rows = read_back(str(tmp_path / "a"))
    by_key = {r["key"].decode(): r for r in rows}
    # Class k comes from network k; the run name joins the two run directories.
    for c, G in ((0, nets["G0"]), (1, nets["G1"])):
        name = ["normal", "tumour"][c]
        got = np.stack([by_key[f"synthetic/u0+u1/{name}/{s}"]["image"] for s in (5, 6, 7)])
        assert np.abs(got.astype(int) - expected_images(G, (5, 6, 7), c).astype(int)).max() <= 1
    assert set(a["provenance"]["snapshots"]) == {"0", "1"}
    # Only some classes, with --classes.
    m = generate_lib.generate_dataset(str(tmp_path / "c"), networks={1: nets["p1"]}, classes=[1],
                                      num_per_class=2, progress=False)["manifest"]
    assert m["splits"]["train"]["class_counts"] == [0, 2]


@pytest.mark.parametrize("kwargs,msg", [
    (dict(network="{root}/missing.keras"), "missing.keras: network snapshot not found"),
    (dict(network="{root}/empty_run"), "no network-snapshot"),
    (dict(network="{run}", classes=[2]), "class 2 out of range"),
    (dict(network="{run}", num_per_class=0), "must be > 0"),
    (dict(network="{run}", num_per_class=-3), "must be > 0"),
    (dict(networks="0:{p0}"), "no network for class 1"),
    (dict(networks="0:{p0},3:{p1}"), "class 3 out of range"),
    (dict(network="{p0}"), "unconditional"),
    (dict(networks="0{p0}"), "expected CLASS:PATH"),
])
def test_bad_input_no_manifest(nets, tmp_path, kwargs, msg):
    os.makedirs(nets["root"] / "empty_run", exist_ok=True)
    kw = {"num_per_class": 2, "progress": False}
    kw.update({k: (v.format(root=nets["root"], run=nets["run"], p0=nets["p0"], p1=nets["p1"])
                   if isinstance(v, str) else v) for k, v in kwargs.items()})
    out = tmp_path / "out"
    with pytest.raises(UserError, match=msg):
        generate_lib.generate_dataset(str(out), **kw)
    assert not out.exists()


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", HISTAUG_QUIET="1")
    return subprocess.run([sys.executable, "-m", "histaug_tf.generate", *args],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_cli_matches_library_and_errors_are_one_line(nets, tmp_path):
    out = tmp_path / "cli"
    p = _cli(f"--network={nets['run']}", f"--outdir={out}", "--num_per_class=3", "--seed=10",
             "--trunc=0.7", "--batch=4")
    assert p.returncode == 0, p.stderr
    lib = generate_lib.generate_dataset(str(tmp_path / "lib"), network=nets["run"], num_per_class=3,
                                        seed=10, truncation_psi=0.7, batch_size=4,
                                        progress=False)["manifest"]
    cli = json.load(open(out / "manifest.json"))
    assert [s["sha256"] for s in cli["splits"]["train"]["shards"]] == \
        [s["sha256"] for s in lib["splits"]["train"]["shards"]]
    assert cli["provenance"]["flags"]["trunc"] == 0.7
    # Existing output without --overwrite; a missing snapshot; --num_per_class <= 0.
    for args, msg in [([f"--network={nets['run']}", f"--outdir={out}", "--num_per_class=1"],
                       "exists"),
                      ([f"--network={tmp_path}/nope.keras", f"--outdir={tmp_path}/o2",
                        "--num_per_class=1"], "nope.keras: network snapshot not found"),
                      ([f"--network={nets['run']}", f"--outdir={tmp_path}/o3", "--num_per_class=0"],
                       "--num_per_class=0: must be > 0")]:
        p = _cli(*args)
        assert p.returncode == 1
        err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
        assert len(err) == 1 and msg in err[0], p.stderr
        assert "Traceback" not in p.stderr
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
    assert json.load(open(out / "manifest.json")) == cli  # the refused run left it untouched


class _MeanStd:
    identity = "test-mean-std"
    dim = 6

    def __call__(self, x):
        x = np.asarray(x, np.float64)
        return np.concatenate([x.mean((1, 2)), x.std((1, 2))], 1).astype(np.float32)


def test_metrics_of_network_equal_metrics_of_its_generated_dataset(nets, tmp_path):
    from histaug_tf.metrics import compute_metrics

    gen_dir = str(tmp_path / "g0")
    generate_lib.generate_dataset(gen_dir, networks={0: nets["p0"]}, classes=[0], num_per_class=12,
                                  seed=0, progress=False)
    real_dir = str(tmp_path / "real")
    generate_lib.generate_dataset(real_dir, network=nets["run"], num_per_class=8, seed=100,
                                  progress=False)
    kw = dict(data_dir=real_dir, extractor=_MeanStd(), pr_extractor=_MeanStd(),
              cache_dir=str(tmp_path / "cache"), batch_size=5, kid_subsets=3, per_class=False)
    names = ["fid_full", "kid", "pr"]
    from_net = compute_metrics(names, generator=generate_lib.Synthesizer(
        G=nets["G0"], noise_mode="const", batch_size=5), num_gen=12, seed=0, **kw)
    from_set = compute_metrics(names, gen_data_dir=gen_dir, seed=0, **kw)
    assert from_net == pytest.approx(from_set, rel=1e-5, abs=1e-9)
    # FID from the images themselves (both sets read back, features and Frechet distance here).
    import scipy.linalg

    def feats(d):
        return _MeanStd()(np.stack([r["image"] for r in read_back(d)]).astype(np.float64) / 127.5 - 1)

    fg, fr = feats(gen_dir).astype(np.float64), feats(real_dir).astype(np.float64)
    s1, s2 = np.cov(fg, rowvar=False, bias=True), np.cov(fr, rowvar=False, bias=True)
    ref = ((fg.mean(0) - fr.mean(0)) ** 2).sum() + np.trace(
        s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))
    assert from_net["fid_full"] == pytest.approx(ref, rel=1e-6)


@pytest.mark.slow
def test_calc_metrics_on_a_run_directory(nets, tmp_path):
    from histaug_tf.apps.calc_metrics import calc_metrics

    real_dir = str(tmp_path / "real")
    generate_lib.generate_dataset(real_dir, network=nets["run"], num_per_class=6, seed=100,
                                  progress=False)
    # 'fid12': the count in the name is the number of generated images.
    r = calc_metrics(["fid12", "kid"], real_dir, network=nets["run"], inception_weights="random",
                     inception_resolution=75, batch_size=12, noise_mode="const",
                     cache_dir=str(tmp_path / "cache"))
    assert r["num_gen"] == 12 and r["num_real"] == 12
    assert r["network"].endswith("network-snapshot-000004.keras")
    assert set(r["metrics"]) == {"fid12_random", "fid12_random/normal", "fid12_random/tumour",
                                 "kid_random"}
    # The same FID from the run's images generated here and the real set read back, through the
    # same random-weight network (seed 0).
    from histaug_tf.metrics.inception import FIDInception
    from histaug_tf.metrics.stats import frechet_distance

    ext = FIDInception("random", seed=0, resolution=75, batch_size=12)
    G, _meta, _path = generate_lib.load_generator(nets["run"])
    labels = np.random.default_rng(0).choice(2, size=12, p=[0.5, 0.5])  # 6 reals per class
    gen = generate_lib.Synthesizer(G=G, noise_mode="const", batch_size=12)(np.arange(12), labels)
    fg = ext(gen.astype(np.float32) / 127.5 - 1).astype(np.float64)
    fr = ext(np.stack([x["image"] for x in read_back(real_dir)]).astype(np.float32) / 127.5 - 1
             ).astype(np.float64)
    ref = frechet_distance(fg.mean(0), np.cov(fg, rowvar=False, bias=True),
                           fr.mean(0), np.cov(fr, rowvar=False, bias=True))
    assert r["metrics"]["fid12_random"] == pytest.approx(ref, rel=1e-4)
